# Sourced by scripts/setup.sh and scripts/lock.sh: where the CPU build of torch comes from.
# PyPI's Linux x86-64 torch is the CUDA build, which pulls several GB of nvidia-* packages; the CPU build
# lives on PyTorch's own index. Where that index cannot be reached (an offline mirror, a pip
# configuration with a local wheel folder), pip's own configuration has to provide it.
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

# Prints pip options that make the CPU build of torch visible: "--extra-index-url URL" when PyTorch's
# CPU index answers within 5 s, nothing otherwise (pip would retry an unreachable index for minutes).
torch_index_args() {
  local py=$1
  if [ "$TORCH_CPU_INDEX" != "none" ] && "$py" - "$TORCH_CPU_INDEX" >/dev/null 2>&1 <<'PY'
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5)
PY
  then
    echo "--extra-index-url $TORCH_CPU_INDEX"
  fi
}
