#!/usr/bin/env bash
# The signed-bundle loop on one machine, every command printed as it runs:
# generate keys, build, sign, publish, serve an origin, start an edge that
# syncs from it, publish version 2 and watch the edge switch.
#
#   edge-config/bundle-demo.sh          # from the repository root
#
# Ports: origin 127.0.0.1:7000, edge 127.0.0.1:8080, admin 127.0.0.1:9090.
# Work files go to .cathedral/bundle-demo/ (recreated on every run).
set -euo pipefail
cd "$(dirname "$0")/.."

C=${CATHEDRAL:-target/release/cathedral}
if [ ! -x "$C" ]; then
    cargo build --release -p cathedral
fi
D=.cathedral/bundle-demo
rm -rf "$D"
mkdir -p "$D"

run() {
    printf '\n\033[1m$ %s\033[0m\n' "$*"
    "$@"
}

wait_for() { # URL: until it answers 200, at most 30 s
    for _ in $(seq 300); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "no answer from $1" >&2
    return 1
}

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== 1. Keys: one offline root key, one online signing key"
run "$C" keys generate --out "$D/keys" --name root
run "$C" keys generate --out "$D/keys" --name signer
run "$C" keys root --version 1 --threshold 1 --key "$D/keys/root.pub" \
    --sign "$D/keys/root.key" --out "$D/root-1.json"
run "$C" keys keyset --version 1 --signer "signer=$D/keys/signer.pub" \
    --sign "$D/keys/root.key" --root "$D/root-1.json" --out "$D/keyset-1.json"

echo
echo "== 2. Build version 1 from the demo's edge config, sign it, publish it"
run "$C" bundle build --config edge-config/edge.toml --regions regions \
    --environment demo --region us-east-1 --version 1 --out "$D/build/v1"
run "$C" bundle sign "$D/build/v1" --key "$D/keys/signer.key"
run "$C" bundle publish "$D/build/v1" --origin "$D/origin" --key "$D/keys/signer.key" \
    --root "$D/root-1.json" --keyset "$D/keyset-1.json"
run "$C" bundle verify --origin "$D/origin" --environment demo --region us-east-1 \
    --root-key "$(cat "$D/keys/root.pub")"

echo
echo "== 3. Serve the origin; start an edge node in bundle mode"
# Background processes are started directly (not through `run`), so the
# cleanup below stops the servers themselves.
printf '\n\033[1m$ %s\033[0m\n' "$C origin serve --dir $D/origin --listen 127.0.0.1:7000 &"
"$C" origin serve --dir "$D/origin" --listen 127.0.0.1:7000 2> "$D/origin.log" &
pids+=($!)
sed "s/ROOT_KEY/$(cat "$D/keys/root.pub")/" edge-config/bundle-node.toml > "$D/node.toml"
printf '\n\033[1m$ %s\033[0m\n' "$C serve --config $D/node.toml &"
"$C" serve --config "$D/node.toml" 2> "$D/edge.log" &
pids+=($!)
wait_for http://127.0.0.1:9090/readyz
run curl -s http://127.0.0.1:9090/bundles
echo
run curl -s http://127.0.0.1:8080/ -o /dev/null -w '%{http_code} %{content_type}\n'
curl -s http://127.0.0.1:8080/ | grep -m1 '<h1'

echo
echo "== 4. Version 2: the same site with a new headline; only that file travels"
mkdir -p "$D/src"
cp -r edge-config "$D/src/edge-config"
mkdir -p "$D/src/guest-modules/target/wasm32-wasip2"
cp -r guest-modules/target/wasm32-wasip2/release "$D/src/guest-modules/target/wasm32-wasip2/"
sed -i 's|<h1>Served from the edge.</h1>|<h1>Version 2, signed and synced.</h1>|' \
    "$D/src/edge-config/site/index.html"
run "$C" bundle build --config "$D/src/edge-config/edge.toml" --regions regions \
    --environment demo --region us-east-1 --version 2 --out "$D/build/v2"
run "$C" bundle sign "$D/build/v2" --key "$D/keys/signer.key"
run "$C" bundle publish "$D/build/v2" --origin "$D/origin" --key "$D/keys/signer.key"
run "$C" bundle push --edge http://127.0.0.1:9090
for _ in $(seq 100); do
    if curl -s http://127.0.0.1:9090/bundles | grep -q '"version":2'; then break; fi
    sleep 0.1
done
run curl -s http://127.0.0.1:9090/bundles
echo
curl -s http://127.0.0.1:8080/ | grep -m1 '<h1'

echo
echo "== 5. Roll back on this edge (audited), then check the audit log's chain"
run "$C" bundle activate --previous --admin http://127.0.0.1:9090
curl -s http://127.0.0.1:8080/ | grep -m1 '<h1'
run "$C" audit verify "$D/edge-state/audit.log"
echo
echo "Done. Logs: $D/edge.log, $D/origin.log"
