#!/usr/bin/env bash
# Lets the ansible-test of the venv VENV run sanity and units with only the package registries reachable:
#
# - ansible-test bootstraps pip in every venv it makes with a get-pip.py it downloads from a host CI cannot reach,
#   unless ~/.ansible/test/cache/get_pip_<pip version with _>.py exists (bootstrap() in
#   ansible_test/_util/target/setup/requirements.py). scripts/get_pip_standin.py goes there: ensurepip, then pip
#   from PyPI at the version ansible-test asks for.
# - A sanity requirement that ansible-test pins to a GitHub archive is installed from its PyPI release instead,
#   each named below with its reason; one not named fails here, so a new one is seen.
#
#   scripts/ansible-test-offline.sh VENV CONTROLLER_VERSION
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$1 controller=$2

# ansible-core 2.22.0rc1 pins dill to a commit "needed until dill released with 3.15 support": the controller
# here is 3.13, which dill 0.4.1 (the release 2.21.5 pins) supports.
declare -A PYPI_RELEASE=([dill]=0.4.1)

pip_version=$("$venv/bin/python" -c 'import sys, types; from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version=sys.argv[1]))["pip"])' "$controller")
dest="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
cmp -s scripts/get_pip_standin.py "$dest" || install -D -m 0644 scripts/get_pip_standin.py "$dest"

data=$("$venv/bin/python" -c 'import ansible_test, os; print(os.path.join(os.path.dirname(ansible_test.__file__), "_data", "requirements"))')
for file in "$data"/sanity.*.txt; do
  while read -r name; do
    release=${PYPI_RELEASE[$name]:-}
    if [ -z "$release" ]; then
      echo "$file pins $name to a URL CI cannot reach: name its PyPI release in $0" >&2
      exit 1
    fi
    sed -i -E "s|^$name @ https?://.*|$name==$release  # from PyPI, by $0|" "$file"
  done < <(sed -nE 's/^([A-Za-z0-9._-]+) @ https?:\/\/.*/\1/p' "$file")
done
