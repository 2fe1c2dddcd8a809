# Sourced by the scripts run on the `device` tool's bare GPU machine (gpu_session.sh, gpu_speed_check.sh): where $py
# (default python3) has no nnunetv2, install the wheels of .gpu/whl (scripts/gpu_carry.sh; carry ".gpu/whl" and
# ".gpu/site") into /tmp/site; then .gpu/site (acvl_utils, stand-ins for SimpleITK and cc3d) goes on PYTHONPATH too.
# The project is put first on PYTHONPATH. Needs $repo (the checkout). Returns non-zero when nnunetv2 cannot be had.
py="${py:-${PYTHON:-python3}}"
export PYTHONPATH="$repo:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1
if ! "$py" -c "import nnunetv2" 2>/dev/null; then
    if ! ls "$repo"/.gpu/whl/*.whl > /dev/null 2>&1; then
        echo "gpu_env.sh: no nnunetv2 for $py and no .gpu/whl: run scripts/gpu_carry.sh here, carry .gpu"
        return 1
    fi
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$repo"/.gpu/whl/*.whl || return 1
fi
[ ! -d /tmp/site/nnunetv2 ] || export PYTHONPATH="$PYTHONPATH:$repo/.gpu/site"
