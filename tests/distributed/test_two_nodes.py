"""Two "nodes" on localhost: node 1 is a separate `nanoserve generate --node-rank 1` process joining
through env:// (torchrun's flag names); node 0's engine matches TP=1 and, on shutdown, node 1 exits 0."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from nanoserve import SamplingParams

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost(tiny_llama, make_llm):
    port = _free_port()
    flags = ["-tp", "2", "--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
             "--dtype", "float32", "--num-cpu-threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    node1 = subprocess.Popen([sys.executable, "-m", "nanoserve.cli", "generate", "--model", str(tiny_llama),
                              "--node-rank", "1", *flags], env=env, start_new_session=True)
    try:
        params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
        prompts = ["hello", "two nodes"]
        expected = [o.outputs[0].token_ids for o in make_llm(tiny_llama, 1).generate(prompts, params,
                                                                                     use_tqdm=False)]
        llm = make_llm(tiny_llama, 2, nnodes=2, node_rank=0, master_addr="127.0.0.1", master_port=port)
        assert llm.llm_engine.runner.step_sink.worker_pids() == []  # rank 1 lives on "node 1"
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
        assert got == expected
        llm.shutdown()
        assert node1.wait(timeout=30) == 0
    finally:
        if node1.poll() is None:
            os.killpg(node1.pid, 9)
            node1.wait()
