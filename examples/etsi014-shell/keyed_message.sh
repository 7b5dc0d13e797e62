#!/usr/bin/env bash
# One message across the emulated network, keyed over ETSI GS QKD 014, with curl + openssl.
#
#   keyed_message.sh send PEER "text"   (on the master SAE's node)
#   keyed_message.sh receive            (on the slave SAE's node, a listening program)
#
# Run as [[nodes.run]] programs (docs/kms.md): qnet sets QNET_KME_URL, QNET_SAE_ID,
# QNET_SAE_CERT, QNET_SAE_KEY, QNET_CA (this SAE and its KME), QNET_PEER_<NODE> and
# QNET_PEER_SAE_<NODE> (how to reach another node's program, and its SAE id), QNET_LISTEN.
#
# The sender takes two keys with enc_keys (one for AES-256-CBC, one for HMAC-SHA256),
# encrypts and tags the text and sends "sae, key ids, iv, ciphertext, tag" through its node's
# tunnel, in an openssl s_client connection to the receiver's openssl s_server. The receiver
# takes the same two keys by id with dec_keys, checks the tag, decrypts and prints the text.
# Exit status 0 only if that all worked.
set -euo pipefail

WAIT_S=${WAIT_S:-90}

kme() {  # kme METHOD PATH [JSON]: one ETSI 014 call with this SAE's certificate
    local method=$1 path=$2 body=${3:-}
    local args=(--silent --show-error --fail-with-body --cert "$QNET_SAE_CERT"
                --key "$QNET_SAE_KEY" --cacert "$QNET_CA" -X "$method")
    [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data "$body")
    curl "${args[@]}" "$QNET_KME_URL$path"
}

key_hex() {  # key_hex JSON INDEX: the key as hex
    jq -r ".keys[$2].key" <<<"$1" | base64 -d | xxd -p -c 256
}

upper() { tr '[:lower:]' '[:upper:]' <<<"$1" | tr -c 'A-Z0-9\n' '_'; }

send() {
    local peer=$1 text=$2
    local sae_var="QNET_PEER_SAE_$(upper "$peer")" addr_var="QNET_PEER_$(upper "$peer")"
    local slave=${!sae_var} addr=${!addr_var} keys="" deadline=$((SECONDS + WAIT_S))
    until keys=$(kme GET "/api/v1/keys/$slave/enc_keys?number=2&size=256" 2>/dev/null); do
        # 503: no keys stored yet (or 400 before a relayed pair's KMEs are peered)
        (( SECONDS < deadline )) || { echo "no keys for $slave in ${WAIT_S}s: $keys" >&2; exit 1; }
        sleep 0.2
    done
    local id1 id2 k1 k2 iv ct tag
    id1=$(jq -r '.keys[0].key_ID' <<<"$keys"); id2=$(jq -r '.keys[1].key_ID' <<<"$keys")
    k1=$(key_hex "$keys" 0); k2=$(key_hex "$keys" 1)
    iv=$(openssl rand -hex 16)
    ct=$(printf '%s' "$text" | openssl enc -aes-256-cbc -K "$k1" -iv "$iv" | base64 -w0)
    tag=$(printf '%s' "$iv$ct" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$k2" -r | cut -d' ' -f1)
    echo "took keys $id1 $id2 from $QNET_KME_URL for $slave"
    until printf '%s\n' "$QNET_SAE_ID" "$id1" "$id2" "$iv" "$ct" "$tag" |
            openssl s_client -connect "$addr" -quiet 2>/dev/null | grep -q '^ok$'; do
        # the receiver may not listen yet (the tunnel then closes the connection at once)
        (( SECONDS < deadline )) || { echo "no receiver behind $addr" >&2; exit 1; }
        sleep 0.2
    done
    echo "sent ${#text} characters to $peer under key $id1, receiver confirmed"
}

receive() {
    local work message master id1 id2 iv ct tag keys k1 k2 expected
    work=$(mktemp -d)
    trap "rm -rf '$work'" EXIT
    # s_server needs a certificate: this SAE's (the tunnel's TLS hides the frame, the QKD
    # keys protect the message). It answers "ok" once the message is in.
    echo "listening on $QNET_LISTEN"
    mkfifo "$work/reply"
    : >"$work/in"
    openssl s_server -accept "$QNET_LISTEN" -naccept 1 -quiet -cert "$QNET_SAE_CERT" \
        -key "$QNET_SAE_KEY" <"$work/reply" >"$work/in" 2>"$work/server.log" &
    local server=$!
    exec 3>"$work/reply"
    while (( $(wc -l <"$work/in") < 6 )); do
        kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
        sleep 0.1
    done
    { read -r master; read -r id1; read -r id2; read -r iv; read -r ct; read -r tag; } <"$work/in"
    keys=$(kme POST "/api/v1/keys/$master/dec_keys" \
        "{\"key_IDs\": [{\"key_ID\": \"$id1\"}, {\"key_ID\": \"$id2\"}]}")
    k1=$(jq -r --arg id "$id1" '.keys[] | select(.key_ID == $id) | .key' <<<"$keys" |
         base64 -d | xxd -p -c 256)
    k2=$(jq -r --arg id "$id2" '.keys[] | select(.key_ID == $id) | .key' <<<"$keys" |
         base64 -d | xxd -p -c 256)
    expected=$(printf '%s' "$iv$ct" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$k2" -r | cut -d' ' -f1)
    [[ $expected == "$tag" ]] || { echo "tag mismatch: not the sender's keys" >&2; exit 1; }
    message=$(base64 -d <<<"$ct" | openssl enc -d -aes-256-cbc -K "$k1" -iv "$iv")
    echo ok >&3
    exec 3>&-
    wait "$server" || true
    echo "received from $master under key $id1: $message"
}

case ${1:-} in
    send) send "${2:?peer node}" "${3:?text}" ;;
    receive) receive ;;
    *) echo "usage: $0 send PEER TEXT | receive" >&2; exit 2 ;;
esac
