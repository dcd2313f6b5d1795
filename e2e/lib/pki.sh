# The cluster's PKI: X.509 v3 certificates (rustls refuses v1), ECDSA P-256 keys.

# cert NAME SUBJECT CA [SAN] [EXT_KEY_USAGE]: a key and a certificate signed by CA.
issue_cert() {
	local name=$1 subject=$2 ca=$3 san=${4:-} usage=${5:-clientAuth}
	local ext=$PKI_DIR/$name.ext
	{
		echo "basicConstraints = critical, CA:FALSE"
		echo "keyUsage = critical, digitalSignature, keyEncipherment"
		echo "extendedKeyUsage = $usage"
		echo "subjectKeyIdentifier = hash"
		echo "authorityKeyIdentifier = keyid"
		[ -n "$san" ] && echo "subjectAltName = $san"
	} >"$ext"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI_DIR/$name.key" 2>/dev/null
	openssl req -new -key "$PKI_DIR/$name.key" -subj "$subject" -out "$PKI_DIR/$name.csr" 2>/dev/null
	openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/$ca.crt" -CAkey "$PKI_DIR/$ca.key" \
		-CAcreateserial -days 365 -sha256 -extfile "$ext" -out "$PKI_DIR/$name.crt" 2>/dev/null
	rm -f "$PKI_DIR/$name.csr" "$ext"
}

issue_ca() {
	local name=$1 cn=$2
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI_DIR/$name.key" 2>/dev/null
	openssl req -x509 -new -key "$PKI_DIR/$name.key" -subj "/CN=$cn" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
		-out "$PKI_DIR/$name.crt" 2>/dev/null
}

# make_pki NODE_NAME NODE_IP: everything the control plane and the node need; kept if present.
make_pki() {
	local node=$1 ip=$2
	if [ -f "$PKI_DIR/done" ] && [ "$(cat "$PKI_DIR/done")" = "$node $ip" ]; then
		return 0
	fi
	log "generating the cluster PKI"
	rm -rf "$PKI_DIR"
	mkdir -p "$PKI_DIR"
	chmod 700 "$PKI_DIR"
	issue_ca ca kubernetes-ca
	issue_ca front-proxy-ca front-proxy-ca
	issue_cert apiserver "/CN=kube-apiserver" ca \
		"DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:$node,IP:127.0.0.1,IP:$ip,IP:$FIRST_SERVICE_IP" \
		serverAuth
	issue_cert admin "/O=system:masters/CN=kubernetes-admin" ca
	issue_cert node "/O=system:nodes/CN=system:node:$node" ca
	issue_cert control "/CN=system:nodus-control" ca
	issue_cert apiserver-kubelet-client "/O=kubeadm:cluster-admins/CN=kube-apiserver-kubelet-client" ca
	issue_cert front-proxy-client "/CN=front-proxy-client" front-proxy-ca
	openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI_DIR/sa.key" 2>/dev/null
	openssl pkey -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub" 2>/dev/null
	echo "$node $ip" >"$PKI_DIR/done"
}

# write_kubeconfig FILE CERT_NAME USER: a self-contained kubeconfig (certificates embedded).
write_kubeconfig() {
	local file=$1 cert=$2 user=$3 server=${4:-https://127.0.0.1:$APISERVER_PORT}
	local b64="base64 -w0"
	cat >"$file" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: $CLUSTER_NAME
  cluster:
    server: $server
    certificate-authority-data: $($b64 <"$PKI_DIR/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $($b64 <"$PKI_DIR/$cert.crt")
    client-key-data: $($b64 <"$PKI_DIR/$cert.key")
contexts:
- name: $user@$CLUSTER_NAME
  context:
    cluster: $CLUSTER_NAME
    user: $user
current-context: $user@$CLUSTER_NAME
KUBECONFIG
	chmod 600 "$file"
}
