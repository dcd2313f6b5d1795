# The upstream e2e suite: e2e.test and ginkgo at the pinned release, built from the Go module
# proxy in their own module (e2e/conformance-suite) and cached with the stock binaries.
# Sourced after common.sh and install.sh, never run.

CONFORMANCE_MOD=$E2E_DIR/conformance-suite
CONFORMANCE_DIR=$E2E_DIR/.conformance
CONFORMANCE_SKIPS=$E2E_DIR/conformance-skips.txt
E2E_TEST_BIN=$STOCK_BIN/e2e.test
GINKGO_BIN=$STOCK_BIN/ginkgo

# build_conformance: e2e.test (`go test -c k8s.io/kubernetes/test/e2e`) and the ginkgo CLI of
# the version k8s.io/kubernetes requires, each built once. A cold build takes about 10 minutes
# on the project's 2 cores, so it runs niced beside whatever else the machine does.
build_conformance() {
	grep -q "k8s.io/kubernetes $K8S_VERSION" "$CONFORMANCE_MOD/go.mod" ||
		die "e2e/conformance-suite/go.mod does not require k8s.io/kubernetes $K8S_VERSION (e2e/lib/common.sh pins it)"
	mkdir -p "$STOCK_BIN"
	if [ ! -x "$E2E_TEST_BIN" ]; then
		log "building upstream e2e.test $K8S_VERSION from the Go module proxy (first time only; a cold build takes about 10 min)"
		(cd "$CONFORMANCE_MOD" && nice -n 10 go test -c -vet=off -trimpath -ldflags "$(go_ldflags)" \
			-o "$E2E_TEST_BIN.tmp" k8s.io/kubernetes/test/e2e)
		mv "$E2E_TEST_BIN.tmp" "$E2E_TEST_BIN"
	fi
	if [ ! -x "$GINKGO_BIN" ]; then
		log "building ginkgo (the version $K8S_VERSION requires) from the Go module proxy (first time only)"
		(cd "$CONFORMANCE_MOD" && nice -n 10 go build -trimpath -o "$GINKGO_BIN.tmp" github.com/onsi/ginkgo/v2/ginkgo)
		mv "$GINKGO_BIN.tmp" "$GINKGO_BIN"
	fi
}
