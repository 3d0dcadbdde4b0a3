# Sourced by the scripts/device_*.sh scripts (repo root as the working directory): makes this checkout
# importable as `hybrid_agent` without building or installing it (the device machine has no package
# index), by a folder of symbolic links that has the layout the wheel installs, put on PYTHONPATH. The
# repository root itself is never put on the path: its `kernels/` would shadow Hugging Face's `kernels`.
site=${HYBRID_AGENT_SITE:-/tmp/hybrid-agent-site}
rm -rf "$site" && mkdir -p "$site/hybrid_agent"
ln -s "$PWD"/hybrid_agent/*.py "$site/hybrid_agent/"
for folder in agent kernels memory model tools tui; do ln -s "$PWD/$folder" "$site/hybrid_agent/$folder"; done
# PYTHONSAFEPATH: `python3 -m pytest` from the root would otherwise put the root first on sys.path, and
# its hybrid_agent/ (the bare package folder, without the subpackages) would shadow the linked one.
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
