#!/usr/bin/env bash
# Side environments with other frameworks' own NIR readers, for tests/test_readers.py (run by `make
# readers`, which .ci/run calls). Pinned versions; nothing is installed by hand. Each environment reuses
# the main .venv's packages (torch 2.14.1 from this machine's wheels, numpy, nir, ...) through a .pth
# file instead of a second 6 GB torch: its own site-packages comes first on sys.path, so a package it pins
# differently (sinabs: nir<=1.0.4) shadows the main one, and pip leaves the main venv untouched
# ("outside environment").
#   .venv-readers/snntorch: snntorch 1.0.0 (it declares no dependencies; it imports torch, nir, nirtorch)
#   .venv-readers/sinabs:   sinabs 3.1.3 with nir 1.0.4 and nirtorch 1.0 (sinabs pins nir<=1.0.4; its
#                           samna dependency, the Speck chip driver, is not needed by sinabs.from_nir/to_nir
#                           and is left out: --no-deps)
# norse 1.1.0 is a dependency of lasnn itself and is read from the main venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MAIN=.venv
ROOT=.venv-readers
SNNTORCH_PIN="snntorch==1.0.0"
SINABS_PINS=("sinabs==3.1.3" "nir==1.0.4" "nirtorch==1.0" "pbr")
site() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

make_env() {  # name, pip arguments...
    local env="$ROOT/$1"; shift
    local stamp="$env/.lasnn-reader-done"
    if [[ -f "$stamp" && "$stamp" -nt "$0" ]]; then return 0; fi
    rm -rf "$env"
    python_bin=$(readlink -f "$MAIN/bin/python")
    "$python_bin" -m venv "$env"
    site "$MAIN" > "$(site "$env")/lasnn-main-venv.pth"
    "$env/bin/python" -m pip install --disable-pip-version-check -q "$@"
    touch "$stamp"
}

make_env snntorch --no-deps --ignore-installed "$SNNTORCH_PIN"  # it declares no dependencies
make_env sinabs --no-deps "${SINABS_PINS[@]}"
.venv-readers/snntorch/bin/python -c "import snntorch.import_nir, nir; print('snntorch', snntorch.__version__, 'nir', nir.__version__)"
.venv-readers/sinabs/bin/python -c "import sinabs, nir, nirtorch; print('sinabs', sinabs.__version__, 'nir', nir.__version__)"
