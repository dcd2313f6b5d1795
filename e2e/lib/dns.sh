# The cluster's DNS add-on, as kubeadm deploys it: CoreDNS (kubeadm's version of the pinned
# release, built here with the plugins its Corefile uses: e2e/images/coredns) in kube-system,
# with its ServiceAccount and RBAC, the Corefile ConfigMap, a Deployment and the kube-dns
# Service at the tenth address of the service range; the node agents' clusterDNS points at
# it. There is no upstream resolver to forward to (no internet): names outside the cluster
# domain are refused. Sourced.

DNS_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
COREDNS_VERSION=v1.14.6
COREDNS_IMAGE=registry.k8s.io/coredns/coredns:$COREDNS_VERSION
# Present when the cluster has the add-on (`e2e/cluster up --dns`).
DNS_FILE=$RUN_DIR/dns

dns_enabled() { [ -f "$DNS_FILE" ]; }

# dns_flags: the node agent's --cluster-dns and --cluster-domain (the kubelet's), when the
# cluster has the add-on; nothing otherwise, so pods get the node's resolv.conf.
dns_flags() {
	dns_enabled && echo "--cluster-dns $DNS_IP --cluster-domain $CLUSTER_DOMAIN"
	return 0
}

# build_coredns: the binary, cached with the stock components; prints its path.
build_coredns() {
	local mod=$E2E_DIR/images/coredns bin=$STOCK_BIN/coredns-$COREDNS_VERSION src
	grep -q "github.com/coredns/coredns $COREDNS_VERSION" "$mod/go.mod" ||
		die "e2e/images/coredns/go.mod does not require coredns $COREDNS_VERSION"
	src=$(cd "$E2E_DIR/stock" && go list -m -f '{{.Dir}}' k8s.io/kubernetes) || return 1
	grep -q "CoreDNSVersion = \"$COREDNS_VERSION\"" "$src/cmd/kubeadm/app/constants/constants.go" ||
		die "COREDNS_VERSION ($COREDNS_VERSION) is not kubeadm $K8S_VERSION's CoreDNSVersion"
	if [ ! -x "$bin" ]; then
		log "building CoreDNS $COREDNS_VERSION from the Go module proxy (first time only)"
		mkdir -p "$STOCK_BIN"
		(cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin.tmp" .) >&2 || return 1
		mv "$bin.tmp" "$bin"
	fi
	echo "$bin"
}

# build_coredns_image: the static binary as /coredns. Upstream's image runs it as user 65532
# with the file capability cap_net_bind_service on the binary, for port 53; this image writer
# carries no extended attributes, so it runs as root, which the Deployment's securityContext
# leaves only NET_BIND_SERVICE.
build_coredns_image() {
	local bin key out rootfs
	bin=$(build_coredns) || return 1
	key=$(image_key "$bin" "$E2E_DIR/images/oci_image.py" <(declare -f build_coredns_image; echo "$COREDNS_IMAGE"))
	out=$IMAGE_CACHE/coredns-$key.tar
	if [ ! -f "$out" ]; then
		rootfs=$(mktemp -d)
		mkdir -p "$rootfs/etc"
		install -m 0755 "$bin" "$rootfs/coredns"
		printf 'root:x:0:0:root:/root:/sbin/nologin\n' >"$rootfs/etc/passwd"
		printf 'root:x:0:\n' >"$rootfs/etc/group"
		python3 "$E2E_DIR/images/oci_image.py" --rootfs "$rootfs" --name "$COREDNS_IMAGE" \
			--entrypoint '["/coredns"]' --output "$out.tmp" >/dev/null || return 1
		rm -rf "$rootfs"
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

dns_ready() {
	[ "$(kc -n kube-system get deployment coredns -o jsonpath='{.status.readyReplicas}' 2>/dev/null)" = 1 ]
}

# deploy_dns: the add-on's objects (kubeadm's, less the forward and loop plugins), then waits
# until CoreDNS answers (its readiness probe: the kubernetes plugin has synced).
deploy_dns() {
	log "deploying CoreDNS $COREDNS_VERSION (kube-dns at $DNS_IP)"
	kc apply -f - >/dev/null <<YAML || die "could not create the DNS add-on"
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {kind: ServiceAccount, name: coredns, namespace: kube-system}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
           lameduck 5s
        }
        ready
        kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
           pods insecure
           fallthrough in-addr.arpa ip6.arpa
           ttl 30
        }
        prometheus :9153
        cache 30 {
           disable success $CLUSTER_DOMAIN
           disable denial $CLUSTER_DOMAIN
        }
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  replicas: 1
  selector:
    matchLabels: {k8s-app: kube-dns}
  template:
    metadata:
      labels: {k8s-app: kube-dns}
    spec:
      priorityClassName: system-cluster-critical
      serviceAccountName: coredns
      tolerations:
      - {key: CriticalAddonsOnly, operator: Exists}
      - {key: node-role.kubernetes.io/control-plane, effect: NoSchedule}
      nodeSelector: {kubernetes.io/os: linux}

      containers:
      - name: coredns
        image: $COREDNS_IMAGE
        imagePullPolicy: IfNotPresent
        resources:
          limits: {memory: 170Mi}
          requests: {cpu: 100m, memory: 70Mi}
        args: ["-conf", "/etc/coredns/Corefile"]
        volumeMounts:
        - {name: config-volume, mountPath: /etc/coredns, readOnly: true}
        ports:
        - {containerPort: 53, name: dns, protocol: UDP}
        - {containerPort: 53, name: dns-tcp, protocol: TCP}
        - {containerPort: 9153, name: metrics, protocol: TCP}
        - {containerPort: 8080, name: liveness-probe, protocol: TCP}
        - {containerPort: 8181, name: readiness-probe, protocol: TCP}
        livenessProbe:
          httpGet: {path: /health, port: liveness-probe}
          initialDelaySeconds: 60
          timeoutSeconds: 5
          failureThreshold: 5
        readinessProbe:
          httpGet: {path: /ready, port: readiness-probe}
        securityContext:
          allowPrivilegeEscalation: false
          capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
          readOnlyRootFilesystem: true
      dnsPolicy: Default
      volumes:
      - name: config-volume
        configMap:
          name: coredns
          items: [{key: Corefile, path: Corefile}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/cluster-service: "true", kubernetes.io/name: CoreDNS}
spec:
  clusterIP: $DNS_IP
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
  - {name: metrics, port: 9153, protocol: TCP, targetPort: 9153}
YAML
	wait_until 120 "CoreDNS to be ready" dns_ready ||
		die "CoreDNS is not ready; see kubectl -n kube-system describe pod -l k8s-app=kube-dns"
}
