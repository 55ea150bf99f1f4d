#!/usr/bin/env bash
# Takes docs/tensorboard_scalars.png: trains a short real cnn_lstm run on 3,000 glyph
# digits, serves it with TensorBoard on 127.0.0.1, waits until both runs' scalars are
# loaded, screenshots the scalars page with headless Chromium and stops the server.
#
#   docs/take_tensorboard_screenshot.sh        (PYTHON=... to pick the interpreter;
#                                               needs Debian's `chromium` on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUTPUT=docs/tensorboard_scalars.png
work=$(mktemp -d)
server=

cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

"$PYTHON" -c "
import numpy as np
from input_fns.embedded import glyphs
images, labels = glyphs.render_digits(3000, seed=3)
np.savez('$work/digits.npz', x=images, y=labels)"

"$PYTHON" bin/train --model=cnn_lstm --data="$work/digits.npz" --model_dir="$work/cnn_lstm" \
    --train_steps=400 --checkpoint_every=50 --learning_rate=0.003 \
    --hparams=cnn_filters=[16,32],rnn_units=32,batch_size=64,warmup_steps=20,summary_images_every=100

port=$("$PYTHON" -c "
import socket
probe = socket.socket(); probe.bind(('127.0.0.1', 0)); print(probe.getsockname()[1]); probe.close()")
"$PYTHON" -m tensorboard.main --logdir "$work/cnn_lstm" --host 127.0.0.1 --port "$port" \
    --reload_interval 1 >"$work/tensorboard.log" 2>&1 &
server=$!

# The page shows only what the server has loaded: wait for both runs' accuracy.
loaded() {
    local tags
    tags=$(curl -sf "http://127.0.0.1:$port/data/plugin/scalars/tags") || return 1
    echo "$tags" | "$PYTHON" -c "
import json, sys
tags = json.load(sys.stdin)
sys.exit(0 if all('accuracy' in tags.get(run, {}) for run in ('.', 'eval')) else 1)"
}
for _ in $(seq 90); do
    loaded && break
    sleep 1
done
loaded || { echo "error: TensorBoard served no scalars in 90s; see its log:" >&2; cat "$work/tensorboard.log" >&2; exit 1; }

# One group of charts, unsmoothed: is it learning, overfitting, fast enough.
page="http://127.0.0.1:$port/#scalars&_smoothingWeight=0"
page+="&tagFilter=%5E(accuracy%7Closs%7Cgradient_norm%7Cexamples_per_sec)%24"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$work/chromium" --window-size=1400,1000 --virtual-time-budget=15000 \
    --screenshot="$OUTPUT" "$page"
echo "wrote $OUTPUT"
