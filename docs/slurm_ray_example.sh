#!/bin/bash
# A Ray cluster inside one SLURM allocation, then the study on it (see docs/ray.md).
#
#   sbatch docs/slurm_ray_example.sh            # all params/*.yaml pairs as Ray tasks, then the analysis
#   sbatch docs/slurm_ray_example.sh llava-base__mimic-cxr   # one pair across every GPU
#
# Adapt the #SBATCH lines to your site (partition, account, GPUs per node). The repository, its
# .venv, the datasets, the models and outputs/ must be on a filesystem every node sees.
#SBATCH --job-name=cxr-vlm-ray
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --mem=0
#SBATCH --time=12:00:00
#SBATCH --output=ray-%j.log
set -euo pipefail

cd "${SLURM_SUBMIT_DIR}"                       # the repository root
export PATH="$PWD/.venv/bin:$PATH"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONHASHSEED=0
# export MIMIC_CXR_JPG=... PADCHEST=... LLAVA_RAD_HF=...   # what your params files name

gpus_per_node="${SLURM_GPUS_PER_NODE##*:}"      # "4" or "a100:4" -> 4
cpus="${SLURM_CPUS_PER_TASK}"
mapfile -t nodes < <(scontrol show hostnames "${SLURM_JOB_NODELIST}")
head_node="${nodes[0]}"
head_ip=$(srun --nodes=1 --ntasks=1 -w "${head_node}" hostname --ip-address | awk '{print $1}')
port=6379
export RAY_ADDRESS="${head_ip}:${port}"
# Ray >= 2.5x uses token authentication; with a shared $HOME every node reads ~/.ray/auth_token.
# Without a shared home, generate one here and pass it on: export RAY_AUTH_TOKEN=...

echo "Ray head on ${head_node} (${RAY_ADDRESS}), ${#nodes[@]} nodes x ${gpus_per_node} GPUs"
srun --nodes=1 --ntasks=1 -w "${head_node}" \
    ray start --head --node-ip-address="${head_ip}" --port="${port}" \
    --num-cpus="${cpus}" --num-gpus="${gpus_per_node}" --include-dashboard=false --block &
sleep 20
for node in "${nodes[@]:1}"; do
    srun --nodes=1 --ntasks=1 -w "${node}" \
        ray start --address="${RAY_ADDRESS}" \
        --num-cpus="${cpus}" --num-gpus="${gpus_per_node}" --block &
done
sleep 20
ray status

if [[ $# -eq 0 ]]; then
    # Many pairs at once: one Ray task (one GPU) per params/*.yaml, then analysis.ipynb.
    make sweep RAY_ADDRESS="${RAY_ADDRESS}"
else
    # One pair across every GPU of the allocation: `workers` actors, one GPU each.
    # `python -m lib evaluate` claims the output folder before papermill writes into it.
    pair="$1"
    python -m lib evaluate "params/${pair}.yaml" \
        -p workers $(( ${#nodes[@]} * gpus_per_node )) -p ray_address "${RAY_ADDRESS}"
fi

# The allocation's end stops the `ray start --block` steps; stop them now to release the nodes.
kill $(jobs -p) 2>/dev/null || true
wait || true
