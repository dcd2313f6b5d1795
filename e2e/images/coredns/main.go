// CoreDNS as the cluster's DNS add-on (kubeadm deploys it; its version is kubeadm's
// CoreDNSVersion of the pinned release), with only the plugins the harness's Corefile uses:
// upstream's default build links every plugin, cloud DNS providers included, which would
// download and compile several SDKs for nothing.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The plugins in the order upstream's plugin.cfg chains them (the Corefile's order does not
// matter; this does).
var directives = []string{
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"hosts",
	"kubernetes",
}

func main() {
	dnsserver.Directives = directives
	coremain.Run()
}
