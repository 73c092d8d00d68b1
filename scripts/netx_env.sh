#!/usr/bin/env bash
# lava-dl's netx (Intel's HDF5 network loader, lava.lib.dl.netx) for tests/test_netx_export.py; run by
# `make netx`, which .ci/run calls. Pinned versions; nothing is installed by hand.
# lava-dl 0.6.0 declares Python <3.11 and pins torch <2.4 (and ninja, opencv, ...). netx itself needs
# lava-nc (0.10.0, already in .venv from `make setup`) and h5py; its hdf5 module imports slayer's RF
# neuron, which imports the whole slayer package: torch (the main venv's 2.14.1 serves), matplotlib,
# pillow, torchvision (all in .venv) and OpenCV (only for slayer's object detection, but imported by
# slayer/__init__). So lava-dl goes into the main .venv without its dependencies and without its Python
# check, with OpenCV's headless wheel (a lava-dl dependency, pinned to a release built for numpy 1.x) and
# h5py pinned. lasnn patches what Python 3.11+ needs at import time (lasnn.sims.lava_compat), never
# site-packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=.venv/bin
LAVA_DL_PIN="lava-dl==0.6.0"
H5PY_PIN="h5py==3.16.0"
OPENCV_PIN="opencv-python-headless==4.10.0.84"  # lava-dl 0.6.0 asks >=4.8.1.78,<5
STAMP=.venv/.lasnn-netx-done
if [[ -f "$STAMP" && "$STAMP" -nt "$0" ]] && "$BIN/python" -c "import lava.lib.dl.netx" 2>/dev/null; then
    exit 0
fi
"$BIN/python" -m pip install --disable-pip-version-check -q "$H5PY_PIN"
"$BIN/python" -m pip install --disable-pip-version-check -q --no-deps "$OPENCV_PIN"
"$BIN/python" -m pip install --disable-pip-version-check -q --no-deps --ignore-requires-python "$LAVA_DL_PIN"
"$BIN/python" -c "import lasnn.sims, h5py; from lava.lib.dl.netx import hdf5; from importlib.metadata import version; print('lava-dl', version('lava-dl'), 'lava-nc', version('lava-nc'), 'h5py', h5py.__version__)"
touch "$STAMP"
