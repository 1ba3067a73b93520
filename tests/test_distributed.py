"""Data parallel: two CPU processes (gloo) under torchrun or accelerate launch give the single process's
output, for the CLI and the Python API; rows are shared by token count."""

import dataclasses
import os
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import MODEL_DIR, ROOT

from ches.data.inputs import load_data
from ches.run.distributed import Process

SAMPLE = str(ROOT / "examples" / "data" / "hh-sample.jsonl")
DRIVER = """
import sys
from ches.run.chunk_loop import ChunkSizes
SMALL = ChunkSizes(pairs=4)  # 16 chunks for 64 rows, so both processes get work
if sys.argv[1] == "api":
    import ches
    from ches.run.distributed import Process
    scored = ches.score(sys.argv[2], sys.argv[3], progress=False, num_threads=1,  # one thread everywhere
                        chunk_sizes=SMALL)
    ranks = Process.current()
    scored.to_parquet(f"{sys.argv[4]}.rank{ranks.rank}.parquet")
else:
    from ches.cli import main
    sys.exit(main(sys.argv[1:], chunk_sizes=SMALL))
"""


PAIRS_DRIVER = """
import sys
from ches.run.chunk_loop import ChunkSizes
SMALL = ChunkSizes(sequences=8)  # a few prompts per chunk, so both processes get work
if sys.argv[1] == "api":
    import ches
    from ches.run.distributed import Process
    built = ches.pairs(sys.argv[2], sys.argv[3], rule="all_min_ches", per_prompt=3, logps=True, progress=False,
                       num_threads=1,  # one thread everywhere: a thread count can change the sums' last bits
                       chunk_sizes=SMALL)
    built.to_parquet(f"{sys.argv[4]}.rank{Process.current().rank}.parquet")
else:
    from ches.cli import main
    sys.exit(main(sys.argv[1:], chunk_sizes=SMALL))
"""


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def launch(tmp_path, *args, launcher="torchrun", expect_success=True, code=DRIVER):
    driver = tmp_path / "driver.py"
    driver.write_text(code)
    program = shutil.which(launcher, path=os.path.dirname(sys.executable)) or shutil.which(launcher)
    if launcher == "torchrun":
        options = ["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    else:  # accelerate's multi-process launcher; on a machine without GPUs the processes use gloo
        options = ["launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                   "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    command = [program, *options, str(driver), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if expect_success:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def single_process(tmp_path):
    driver = tmp_path / "single.py"
    driver.write_text(DRIVER)
    output = tmp_path / "single.parquet"
    subprocess.run([sys.executable, str(driver), "score", SAMPLE, "--model", str(MODEL_DIR), "--output", str(output),
                    "--threads", "1", "--no-progress"], check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})  # same threads: same sums
    return load_data(str(output))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_write_what_one_process_writes(tmp_path, launcher):
    output = tmp_path / "scores.parquet"
    launch(tmp_path, "score", SAMPLE, "--model", str(MODEL_DIR), "--output", str(output), "--threads", "1",
           "--no-progress", launcher=launcher)  # one thread everywhere: a count chosen from the load can change the sums
    assert load_data(str(output)).to_list() == single_process(tmp_path).to_list()  # same chunks: same numbers
    meta = (tmp_path / "scores.parquet.meta.json").read_text()
    assert '"processes": 2' in meta


@pytest.mark.slow
def test_python_api_returns_the_full_result_on_every_rank(tmp_path):
    launch(tmp_path, "api", SAMPLE, str(MODEL_DIR), str(tmp_path / "api"))
    expected = single_process(tmp_path).to_list()
    for rank in (0, 1):
        assert load_data(str(tmp_path / f"api.rank{rank}.parquet")).to_list() == expected


@pytest.mark.slow
def test_pairs_on_two_processes_equal_one_process(tmp_path):
    """ches.pairs under torchrun: every rank returns the single process's pairs (log-probs too), and the CLI's
    rank 0 writes them."""
    import json

    from test_pairs import hh_candidate_rows, persona_rows

    data = tmp_path / "candidates.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in persona_rows(4) + hh_candidate_rows(4)))
    driver = tmp_path / "single.py"
    driver.write_text(PAIRS_DRIVER)
    subprocess.run([sys.executable, str(driver), "api", str(data), str(MODEL_DIR), str(tmp_path / "single")], check=True,
                   capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    expected = load_data(str(tmp_path / "single.rank0.parquet")).to_list()
    assert len(expected) >= 16  # pairs from every prompt: enough to split
    launch(tmp_path, "api", str(data), str(MODEL_DIR), str(tmp_path / "api"), code=PAIRS_DRIVER)
    for rank in (0, 1):
        assert load_data(str(tmp_path / f"api.rank{rank}.parquet")).to_list() == expected
    output = tmp_path / "pairs.parquet"
    launch(tmp_path, "pairs", str(data), "--model", str(MODEL_DIR), "--rule", "all_min_ches", "--per-prompt", "3",
           "--logps", "--threads", "1", "--output", str(output), "--no-progress", code=PAIRS_DRIVER)
    assert load_data(str(output)).to_list() == expected
    assert json.loads((tmp_path / "pairs.parquet.meta.json").read_text())["run"]["processes"] == 2


@pytest.mark.parametrize("world", [1, 2, 3])
def test_share_covers_every_item_once_and_balances_tokens(world):
    costs = [100, 7, 50, 50, 3, 90, 20, 20, 20]
    shares = [Process(rank, world).share(costs) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(len(costs)))
    loads = [sum(costs[i] for i in share) for share in shares]
    assert max(loads) - min(loads) <= max(costs)


@pytest.mark.slow
def test_a_tokenization_error_on_one_rank_stops_every_rank(tmp_path):
    # each rank tokenizes half the rows; row 50 (second half) makes the chat template raise
    import json

    from conftest import conversational_rows, hh_rows
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    tokenizer.chat_template = ("{% for message in messages %}{% if message['content'] == 'BOOM' %}"
                               "{{ raise_exception('this template refuses BOOM') }}{% endif %}"
                               "{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}")
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    rows = conversational_rows(hh_rows(64))
    rows[50]["chosen"] = [{"role": "assistant", "content": "BOOM"}]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = launch(tmp_path, "score", str(data), "--model", str(MODEL_DIR), "--tokenizer", str(tmp_path / "tokenizer"),
                    "--output", str(tmp_path / "out.parquet"), "--no-progress", expect_success=False)
    assert result.returncode != 0 and "ches: error: row 50: the chat template cannot render" in result.stderr
    assert not (tmp_path / "out.parquet").exists()


@dataclasses.dataclass(frozen=True)
class OtherRank(Process):
    """Rank 0 of two, with what rank 1 sends scripted: exercises the exchange without processes."""

    sent: list = dataclasses.field(default_factory=list)

    def gather_flat(self, values):
        return [values, self.sent.pop(0)]


def test_a_failure_in_one_process_is_raised_in_every_process():
    import json

    import torch

    from ches import ChesError

    def report(error):
        return torch.tensor(list(json.dumps(error).encode()), dtype=torch.long)

    nothing = torch.zeros(0, dtype=torch.long)
    OtherRank(0, 2, sent=[nothing]).fail_together(None)  # nobody failed: returns
    ches_error = {"ches": True, "type": "ChesError", "message": "row 50: the chat template cannot render it"}
    with pytest.raises(ChesError, match="^row 50: the chat template cannot render it$"):
        OtherRank(0, 2, sent=[report(ches_error)]).fail_together(None)
    crash = {"ches": False, "type": "OutOfMemoryError", "message": "CUDA out of memory"}
    with pytest.raises(ChesError, match="^process 1 failed: OutOfMemoryError: CUDA out of memory$"):
        OtherRank(0, 2, sent=[report(crash)]).fail_together(None)
    with pytest.raises(KeyError):  # where it happened, the error itself
        OtherRank(0, 2, sent=[report(crash)]).fail_together(KeyError("mine"))


@pytest.mark.slow
def test_validate_trains_on_every_rank_and_rank_0_writes(tmp_path):
    """ches validate under torchrun: TRL's trainer runs on both processes (data parallel, as TRL trains there), the
    scoring is shared, and one result is printed and written."""
    import json

    output = tmp_path / "validation.json"
    flags = ["validate", SAMPLE, "--model", str(MODEL_DIR), "--n", "3", "--seeds", "1", "--max-length", "128",
             "--lr", "5e-4", "--threads", "1", "--no-progress", "--output", str(output)]
    code = f"import sys\nfrom ches.cli import main\nsys.exit(main({flags!r}))\n"  # torchrun would read --n itself
    result = launch(tmp_path, code=code)
    written = json.loads(output.read_text())
    assert written["settings"]["processes"] == 2 and len(written["subsets"]) == 9
    assert result.stdout.count("gap = mean change on the lowest") == 1  # printed by rank 0 only
    assert all(run["steps"] == 1 for item in written["subsets"] for run in item["runs"])
