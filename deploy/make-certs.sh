#!/usr/bin/env bash
# Makes a CA and, for each NAME, a certificate and key that dtc processes use
# for mutual TLS (--tls-cert NAME.pem --tls-key NAME.key --tls-ca ca.pem):
# every certificate serves as both server and client certificate, and is
# valid for the host name NAME, localhost and 127.0.0.1 (plus the
# subjectAltName entries in $DTC_CERT_SANS, e.g. "DNS:dtc.example.com,IP:10.0.0.5").
#
#   deploy/make-certs.sh [-d DIR] [NAME...]
#
# DIR defaults to deploy/certs; NAMEs default to the compose cluster's hosts
# and a client: coord-1 coord-2 coord-3 ledger-a ledger-b client. An existing
# CA in DIR is kept (new names join the same cluster); existing certificates
# are replaced. Needs openssl. Keys are EC P-256, PKCS#8; certificates last
# 825 days, the CA 10 years.
set -euo pipefail

dir="$(dirname "$0")/certs"
if [[ "${1:-}" == "-d" ]]; then
  [[ $# -ge 2 ]] || { echo "usage: $0 [-d DIR] [NAME...]" >&2; exit 2; }
  dir="$2"
  shift 2
fi
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
  names=(coord-1 coord-2 coord-3 ledger-a ledger-b client)
fi
command -v openssl >/dev/null || { echo "$0: openssl is needed" >&2; exit 1; }
for n in "${names[@]}"; do
  [[ "$n" =~ ^[A-Za-z0-9][A-Za-z0-9.-]*$ ]] || { echo "$0: $n is not a host name" >&2; exit 2; }
done
mkdir -p "$dir"
umask 077

if [[ ! -f "$dir/ca.pem" || ! -f "$dir/ca.key" ]]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 -subj "/CN=dtc cluster CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  echo "made CA $dir/ca.pem"
fi

for n in "${names[@]}"; do
  sans="DNS:$n,DNS:localhost,IP:127.0.0.1${DTC_CERT_SANS:+,$DTC_CERT_SANS}"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
    -keyout "$dir/$n.key" -out "$dir/$n.csr" -subj "/CN=$n" 2>/dev/null
  openssl x509 -req -in "$dir/$n.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 825 -out "$dir/$n.pem" \
    -extfile <(printf '%s\n' \
      "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth,clientAuth" \
      "subjectAltName=$sans") 2>/dev/null
  rm -f "$dir/$n.csr"
  echo "made $dir/$n.pem and $dir/$n.key ($sans)"
done
# Certificates are public; keys stay readable by their owner only.
chmod 644 "$dir"/*.pem
