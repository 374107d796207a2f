#!/usr/bin/env bash
# Set up SPINAL in ./.venv and start the dashboard on the offline demo, or run the tests.
#
#   ./run.sh          install (first time), build the demo if missing, serve http://127.0.0.1:8501
#   ./run.sh test     install with test extras and run the test suite
#
# Environment: PYTHON (interpreter used to create the venv, default python3),
# SPINAL_STORE (trace store), SPINAL_PORT (dashboard port, default 8501).
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
venv=.venv
stamp=$venv/.spinal-installed

install() {
    local requirements=$1
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
    fi
    # Reinstall only when a requirements file or pyproject.toml changed since the last install.
    if [ ! -f "$stamp" ] || [ "$requirements" -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! grep -qx "$requirements" "$stamp"; then
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet -r "$requirements"
        "$venv/bin/python" -m pip install --quiet --no-deps -e .
        echo "$requirements" > "$stamp"
    fi
}

case "${1:-run}" in
    run)
        install requirements.txt
        exec "$venv/bin/spinal" demo --port "${SPINAL_PORT:-8501}"
        ;;
    test)
        install requirements-dev.txt
        shift
        exec "$venv/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./run.sh [run|test [PYTEST_ARGS...]]" >&2
        exit 2
        ;;
esac
