"""Tensor parallelism over torch.distributed (gloo on CPU, NCCL on CUDA).

- parallel_state.py: the process groups of one engine (rank, world size, device group, control group).
- communicator.py: the collectives the model and the executor call, each counted (bytes, seconds).
- step_codec.py: a step's flat inputs as one int64 tensor, the message rank 0 broadcasts each step.
- worker.py: the process of one rank > 0: joins the groups, loads its shard, runs the steps it receives.
- executor.py: rank 0's side, in the engine process: starts the workers, sends each step, shuts them down.

The model's sharded layers are nanoserve/model/parallel_layers.py; the scheduler knows nothing of ranks.
"""
