"""Re-run the hostile inputs of the robustness reviews (round 2, and round 3 = issue 22) through the real CLI; print
what each one prints now.

    python benchmarks/hostile_inputs.py --out benchmarks/hostile_inputs.md       # ~13 min on 2 cores, as root
    python benchmarks/hostile_inputs.py --round 3 --cases 1,10                    # only issue 22's cases 1 and 10

Each case starts `python -m wsa_lab ...` (or `wsa_lab.evaluate`, `.report`, `.pretrain`, `.weights`) in a scratch
folder with a tiny config, and records the exit code, the seconds it took, the last line of stderr and a fact
checked afterwards (a file that must not exist, a secret that must be in no file, ...). The faults that need a run
to be interrupted at a chosen moment (SIGINT, SIGTERM, SIGKILL, a deleted `metrics.jsonl`, two writers) are in the
tests; their rows name the test. The read-only and full-disk cases mount small tmpfs folders, so they need root
(skipped otherwise, saying so). The user envs of round 3 are examples/graph_envs' ValueGraph and tests/faulty_envs.py,
put on PYTHONPATH (with this checkout's src/) for the subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "algo.total_timesteps=64", "algo.num_envs=4", "algo.num_steps=8", "algo.num_minibatches=2", "algo.update_epochs=1",
    "env.num_nodes=20", "env.knn_k=4", "env.num_sites=3", "evaluation.num_instances=4", "evaluation.interval=1",
    "checkpoint.interval=1", "logger=[console]", "logger.console.progress_bar=false", "ptm=[graph_cnn]",
]


def tiny(*overrides: str) -> list[str]:
    """TINY with `overrides`; a key (or `key=`) given there replaces TINY's, `-key` drops it."""
    drop = {o.split("=")[0].lstrip("+-") for o in overrides}
    return [*(o for o in TINY if o.split("=")[0] not in drop), *(o for o in overrides if not o.startswith("-"))]


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> dict:
    """Run `cmd`; its exit code, seconds, last stderr line and peak memory (the child's max RSS, from wait4)."""
    start = time.time()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() - start > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = rc = os.waitstatus_to_exitcode(status)  # -N: killed by signal N
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [line for line in stderr.splitlines() if line.strip()]
    return {"rc": rc, "s": round(time.time() - start, 1), "last": lines[-1] if lines else "", "stdout": stdout,
            "stderr": stderr, "traceback": "Traceback" in stderr, "stderr_lines": len(lines),
            "peak_mb": round(usage.ru_maxrss / 1024)}


def mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                                check=False).returncode == 0


# ============================================================================================ round 2 (the inputs)
def round2(work: Path, env: dict[str, str], rows: list) -> None:
    def case(label: str, cli: list[str], module: str = "wsa_lab", check: str = "", **kw) -> dict:
        result = run([sys.executable, "-m", module, *cli], work, kw.pop("env", env), **kw)
        rows.append((label, result, check))
        print(f"{label}: rc={result['rc']} {result['s']} s: {result['last'][:200]}", flush=True)
        return result

    # --- a refused resume leaves the folder as it was
    folder = work / "trained"
    case("(setup) a tiny run, env.cost=1.0", [*TINY, "env.cost=1.0", f"hydra.run.dir={folder}"])
    before = (folder / "resolved_config.yaml").read_text()
    case("refused resume (`env.cost=2.0` on a folder trained with 1.0)", [*TINY, "env.cost=2.0", f"hydra.run.dir={folder}"],
         check=f"resolved_config.yaml unchanged: {(folder / 'resolved_config.yaml').read_text() == before}")
    secret_dir = work / "secret"
    case("`+logger.wandb.api_key=abc`", [*TINY, "+logger.wandb.api_key=abcdefsecret", f"hydra.run.dir={secret_dir}"])
    rows[-1] = (*rows[-1][:2], "key in any file: " + str(any(
        "abcdefsecret" in p.read_text(errors="ignore") for p in work.rglob("*") if p.is_file())))
    case("`name=../../../escape/x`", [*TINY, "name=../../../escape/x"],
         check=f"an `escape` folder made: {any((p / 'escape').exists() for p in (work, work.parent, work.parent.parent))}")
    case("`env.cost=nan`", [*TINY, "env.cost=nan"])
    case("`env.r_max=nan`", [*TINY, "env.r_max=nan"])
    case("`evaluation.num_instances=0`", [*TINY, "evaluation.num_instances=0"])
    case("`ptm=[graph_cnn,graph_cnn]`", [*TINY, "ptm=[graph_cnn,graph_cnn]"])
    case("`algo.max_grad_norm=-1`", [*TINY, "algo.max_grad_norm=-1"])
    case("online W&B, well-formed key, no network", [*TINY, "logger=[console,wandb]", "logger.wandb.mode=online"],
         env={**env, "WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567", "HTTPS_PROXY": "http://127.0.0.1:9",
              "HTTP_PROXY": "http://127.0.0.1:9"})
    copies = work / "copies"
    shutil.copytree(folder, copies / "a")
    shutil.copytree(folder, copies / "b")
    case("`wsa_lab.report` over two copies of one run", [str(copies), "--no-plots", "--reps", "100"], module="wsa_lab.report")
    seeds = next((line.split()[3] for line in rows[-1][1]["stdout"].splitlines() if line.startswith("wsa3_default")), "?")
    rows[-1] = (rows[-1][0], rows[-1][1], f"seeds counted: {seeds}; " + " ".join(
        line for line in rows[-1][1]["stdout"].splitlines() if line.startswith("left out")).replace(str(work) + "/", ""))
    # --- the inputs that crashed or exhausted memory
    case("`algo.num_envs=1000000`", [*TINY, "algo.num_envs=1000000"])
    case("`algo.num_envs=1000000 algo.total_timesteps=8000000`", [*TINY, "algo.num_envs=1000000", "algo.total_timesteps=8000000"])
    case("`env.num_nodes=100000`", [*TINY, "env.num_nodes=100000"])
    case("`algo.clip_coef=-1`", [*TINY, "algo.clip_coef=-1"])
    case("`seed=1180591620717411303424` (2**70)", [*TINY, "seed=1180591620717411303424"])
    case("`checkpoint.interval=0`", [*TINY, "checkpoint.interval=0"])
    case("`evaluation.interval=0`", [*TINY, "evaluation.interval=0"])
    a_file = work / "a_file"
    a_file.write_text("x")
    case("`hydra.run.dir=<an existing file>`", [*TINY, f"hydra.run.dir={a_file}"])
    read_only = work / "ro"
    if mount_tmpfs(read_only, "ro,size=1m"):
        case("`hydra.run.dir` on a read-only mount", [*TINY, f"hydra.run.dir={read_only}/run"])
        subprocess.run(["umount", str(read_only)], check=False)
    small = work / "small"
    if mount_tmpfs(small, "size=3m"):
        case("run folder on a disk that fills up (3 MB tmpfs)",
             [*[o for o in TINY if not o.startswith("ptm=")], "ptm=[graph_cnn,resnet18_random]", f"hydra.run.dir={small}/run"])
        summary = small / "run" / "summary.json"
        rows[-1] = (rows[-1][0], rows[-1][1], f"summary.json: {json.loads(summary.read_text()).get('status') if summary.exists() else 'not written'}")
        subprocess.run(["umount", str(small)], check=False)
    case("`--cfg job --resolve`", [*TINY, "--cfg", "job", "--resolve"], check="(prints the config; exit 0)")
    case("`--cfg hydra --resolve`", [*TINY, "--cfg", "hydra", "--resolve"], check="(prints the config; exit 0)")
    case("`python -m wsa_lab.weights download` offline", ["download", "resnet18"], module="wsa_lab.weights",
         env={**env, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
    damaged = work / "damaged"
    shutil.copytree(folder, damaged)
    (damaged / "resolved_config.yaml").write_text("key: [unclosed\n\t: x")
    case("`wsa_lab.evaluate` on a run whose resolved_config.yaml is not YAML", [str(damaged)], module="wsa_lab.evaluate")



# ============================================================================================ round 3 (issue 22)
@dataclass
class Case:
    """One row: `python -m <module> <cli>` (or `command`), the documented exit code, and a fact checked afterwards."""

    issue: str  # the issue's case number
    label: str
    cli: list[str] = field(default_factory=list)
    module: str = "wsa_lab"
    expect: str = "1"  # the documented exit code; "0/1": two jobs at once, one may run, the other is refused
    env: dict[str, str] = field(default_factory=dict)  # added to the environment
    prepare: Optional[Callable[[], object]] = None  # makes the files the case needs; returns False to skip the row
    check: Optional[Callable[[dict], tuple[str, bool]]] = None  # (the fact, whether it is the good one)
    together: Optional[list[str]] = None  # a second `python -m <module>` started at the same moment
    command: Optional[list[str]] = None  # a plain command instead of `python -m <module>`
    tests: str = ""  # the case needs a signal at a chosen moment: the tests that drive it instead
    timeout: int = 300
    key: str = ""  # name under which its result is kept, for a later case's check


class Skip(Exception):
    """A prepare step that could not be done (e.g. no root for a mount): the row says so."""


def round3_cases(work: Path) -> tuple[list[Case], dict[str, dict]]:
    """The rows, in the issue's order, and the dict where results named by `key` are kept."""
    base, gym_run, pre, study = work / "r3_base", work / "r3_gym", work / "pretrained", work / "study"
    evaluate = ["num_instances=2", "episodes=1", "bootstrap_reps=200", "device=cpu"]
    value_graph = ["-env.num_nodes", "-env.knn_k", "-env.num_sites", "env=gym", "env.id=graph_envs:graph_envs/ValueGraph-v0"]
    gym = tiny(*value_graph)
    results: dict[str, dict] = {}  # filled by run_round3 for cases with a `key`
    ro = work / "ro3"

    def pwned(name: str) -> Path:
        return work / f"pwned_{name}"

    def copy(src: Path, name: str) -> Path:
        shutil.copytree(src, work / name)
        return work / name

    def hostile_config(name: str, edit: Callable) -> Callable[[], None]:
        """Copy the base run and edit its resolved_config.yaml (as someone sharing the folder could)."""
        def prepare() -> None:
            from omegaconf import OmegaConf

            path = copy(base, name) / "resolved_config.yaml"
            config = OmegaConf.load(path)
            OmegaConf.set_struct(config, False)
            edit(config)
            path.write_text(OmegaConf.to_yaml(config))
        return prepare

    def not_made(name: str) -> Callable[[dict], tuple[str, bool]]:
        return lambda r: (f"{pwned(name).name} made (command/unpickle/write ran): {pwned(name).exists()}", not pwned(name).exists())

    def summary(folder: Path) -> dict:
        path = folder / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def secret_nowhere(secret: str) -> Callable[[dict], tuple[str, bool]]:
        def check(r: dict) -> tuple[str, bool]:
            found = [str(p.relative_to(work)) for p in work.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
            return f"secret in a file: {', '.join(found) or 'none'}", not found
        return check

    def faulty(fault: str) -> Case:
        folder = work / f"fault_{fault}"
        cli = tiny(*value_graph, "algo.num_steps=4", "algo.num_envs=1", "algo.num_minibatches=1", "env.id=faulty/Value-v0",
                   "env.entry_point=faulty_envs:FaultyValueGraph", f"+env.kwargs.fault={fault}", "+env.kwargs.fault_step=5",
                   f"hydra.run.dir={folder}")

        def check(r: dict) -> tuple[str, bool]:
            s, last = summary(folder), folder / "checkpoints" / "last.pt"
            return f"summary: {s.get('status')}; last.pt kept: {last.exists()}", s.get("status") == "failed" and last.exists()
        return Case("8", f"env fault `{fault}` (tests/faulty_envs.py, step 5)", cli, check=check)

    # --- case 1: pieces of a hostile run folder / study folder
    def notes_pickle() -> None:
        (work / "notes.pkl").write_bytes(pickle.dumps(Touch(pwned("unpickle"))))

    def study_folder() -> None:
        (study / "env").mkdir(parents=True)
        (study / "env" / "pwn.yaml").write_text(f"_target_: os.system\ncommand: touch {pwned('study')}\n")

    # --- case 3: two pretrains of one name at once
    twin = ["ptm=graph_cnn", "objective=dgi", "name=twin", "env.num_nodes=20", "env.knn_k=4", "env.num_sites=3",
            "pretrain.collect_steps=64", "pretrain.num_envs=8", "pretrain.epochs=2", "pretrain.batch_size=16",
            "progress_bar=false", f"paths.pretrained_dir={pre}"]

    def twins_check(r: dict) -> tuple[str, bool]:
        from omegaconf import OmegaConf

        made = pre / "ptm" / "twin.yaml"
        made_by = OmegaConf.load(made).twin.made_by if made.exists() else ""
        winner = "seed=0" if r["rc"] == 0 else "seed=1" if r["rc2"] == 0 else None
        fine = sorted((r["rc"], r["rc2"])) == [0, 1] and winner is not None and winner in made_by
        return (f"twin.yaml made_by has the job that exited 0 ({winner}): {winner is not None and winner in made_by}; "
                f"budget in made_by (case 16): {'pretrain.epochs=2' in made_by}; left: {sorted(p.name for p in pre.iterdir())}"), fine

    # --- case 10: a weight file whose byte is flipped, its mtime put back
    weights = work / "weights"

    def own_weights() -> None:
        import hashlib

        if not (pre / "twin.pt").exists():
            raise Skip("no pre-trained twin.pt (case 3) to use as a weight file")
        data = (pre / "twin.pt").read_bytes()
        weights.mkdir()
        (weights / f"gcn-{hashlib.sha256(data).hexdigest()[:8]}.pt").write_bytes(data)

    def flip_a_byte() -> None:
        path = next(weights.glob("gcn-*.pt"), None)
        if path is None:
            raise Skip("no weight file (the setup row before was skipped)")
        st = path.stat()
        with open(path, "r+b") as fh:
            fh.seek(st.st_size // 2)
            byte = fh.read(1)
            fh.seek(st.st_size // 2)
            fh.write(bytes([byte[0] ^ 0xFF]))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    def mount_ro() -> None:
        if not mount_tmpfs(ro, "ro,size=1m"):
            raise Skip("needs root for a read-only tmpfs mount")

    def needs_ro() -> None:
        if not ro.is_mount():
            raise Skip("needs the read-only mount of the row before (root)")

    # --- case 9: damaged metrics files
    def xff_in_metrics() -> None:
        path = copy(base, "xff") / "metrics.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        lines[1] = lines[1].replace(b'"global_step"', b'"x": "\xff", "global_step"', 1)
        path.write_bytes(b"".join(lines))

    def abc_in_metrics() -> None:
        copy(base, "abc/a")
        with open(work / "abc" / "a" / "metrics.jsonl", "a") as fh:
            fh.write('{"global_step": "abc", "eval/greedy_ratio": 9.0}\n')

    def mixed_envs() -> None:
        copy(base, "mixed/coverage")
        copy(gym_run, "mixed/user_env")

    def memory_check(r: dict) -> tuple[str, bool]:
        s, baseline = summary(work / "big"), results["base"]["peak_mb"]
        parts = [part.rsplit(" ", 2)[-2:] for part in s.get("memory_estimate", "").split(", ") if part]
        estimate = sum(float(n) * {"MiB": 1, "GiB": 1024}.get(unit, 0) * 1.048576 for n, unit in parts)  # MB
        ratio = (r["peak_mb"] - baseline) / estimate if estimate else float("nan")
        return (f"estimate {s.get('memory_estimate', '-')} (sum {estimate:.0f} MB); measured peak RSS {r['peak_mb']} MB, "
                f"{r['peak_mb'] - baseline:+} MB over the 20-node run's {baseline} MB: {ratio:.2f}x the estimate"), ratio <= 1.5

    tensorboard = Path(sys.executable).parent / "tensorboard"
    dead_proxy = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    return [
        Case("-", "(setup) a tiny coverage run", [*TINY, f"hydra.run.dir={base}"], expect="0", key="base"),
        Case("-", "(setup) a tiny run of a user env (ValueGraph, env=gym), the same arm name",
             [*gym, "name=wsa3_default", f"hydra.run.dir={gym_run}"], expect="0"),
        # 1. a run or study folder from someone else runs code
        Case("1", "`wsa_lab.evaluate` of a run folder whose PTM is `target: os.system` + `kwargs: {command: touch ...}`",
             [str(work / "h_ptm"), *evaluate], module="wsa_lab.evaluate", check=not_made("ptm"),
             prepare=hostile_config("h_ptm", lambda c: c.actor_critic.wsa.pretrained_models[0].update(
                 {"model_type": "custom", "target": "os.system", "input": "graph", "kwargs": {"command": f"touch {pwned('ptm')}"}}))),
        Case("1", "`wsa_lab.evaluate` of a run folder with `env.pwn: {_target_: torch.load, f: notes.pkl, weights_only: false}`",
             [str(work / "h_pickle"), *evaluate], module="wsa_lab.evaluate", check=not_made("unpickle"),
             prepare=lambda: (notes_pickle(), hostile_config("h_pickle", lambda c: c.env.__setitem__(
                 "pwn", {"_target_": "torch.load", "f": str(work / "notes.pkl"), "weights_only": False}))())),
        Case("1", "`wsa_lab.evaluate` of a run folder with `actor_critic.extra: {_target_: ...write_text_atomic}`",
             [str(work / "h_write"), *evaluate], module="wsa_lab.evaluate", check=not_made("write"),
             prepare=hostile_config("h_write", lambda c: c.actor_critic.__setitem__("extra", {
                 "_target_": "wsa_lab.run.atomic.write_text_atomic", "path": str(pwned("write")), "text": "x"}))),
        Case("1", "training with `--config-dir <study>` whose `env/pwn.yaml` is `_target_: os.system`",
             ["--config-dir", str(study), *tiny("-env.num_nodes", "-env.knn_k", "-env.num_sites"), "env=pwn",
              f"hydra.run.dir={work / 'h_study'}"], prepare=study_folder, check=not_made("study")),
        # 2. async envs and signals
        Case("2", "async envs: SIGINT / SIGTERM to the process group; an async env that raises",
             tests="tests/test_contract.py::test_async_envs_stop_like_sync_ones_on_a_signal_to_the_process_group (SIGINT 130, "
                   "SIGTERM 143, checkpoint, `interrupted`); ::test_an_async_env_that_raises_is_one_line_not_a_chain_of_tracebacks"),
        # 3. two pretrains of one name
        Case("3", "two `wsa_lab.pretrain name=twin` at once (seed 0 and seed 1)", [*twin, "seed=0"], module="wsa_lab.pretrain",
             together=[*twin, "seed=1"], expect="0/1", check=twins_check),
        Case("3", "a refused pretrain (`ptm=graph_cnn objective=autoencoder name=refused`)",
             [*twin[:1], "objective=autoencoder", "name=refused", *twin[3:]], module="wsa_lab.pretrain",
             check=lambda r: (f"`.refused/` left: {(pre / '.refused').exists()}", not (pre / ".refused").exists())),
        # 4. kills and resumes vs TensorBoard and W&B
        Case("4", "SIGKILL x4 + resume: TensorBoard and W&B steps once; `resume=false` is a new W&B run",
             tests="tests/test_faults.py::test_sigkill_at_random_moments_then_sigterm_then_restart_matches_an_uninterrupted_run; "
                   "tests/test_tracking.py::test_a_resumed_run_logs_each_step_once_and_names_every_attempt_to_sync, "
                   "::test_a_run_that_starts_over_is_a_new_wandb_run"),
        # 5. secrets by key name
        Case("5", "`+env.kwargs.access_token=...` (env=gym, TensorBoard and W&B on)",
             [*gym, "+env.kwargs.access_token=wsaSECRETaccess", "logger=[console,tensorboard,wandb]", f"hydra.run.dir={work / 's5a'}"],
             check=secret_nowhere("wsaSECRETaccess")),
        Case("5", "`+env.kwargs.sim_apikey=...` (env=gym)", [*gym, "+env.kwargs.sim_apikey=wsaSECRETapikey",
             "logger=[console,tensorboard,wandb]", f"hydra.run.dir={work / 's5b'}"], check=secret_nowhere("wsaSECRETapikey")),
        Case("5", "`+hydra.job.env_set.WANDB_API_KEY=...` (W&B on)", [*tiny("logger=[console,wandb]"),
             "+hydra.job.env_set.WANDB_API_KEY=wsaSECRETenvset0123456789abcdef0123456789", f"hydra.run.dir={work / 's5c'}"],
             check=secret_nowhere("wsaSECRETenvset")),
        # 6. divergence
        Case("6", "`algo.learning_rate=1e6`", [*tiny("algo.total_timesteps=256", "algo.learning_rate=1e6"), f"hydra.run.dir={work / 'lr'}"],
             check=lambda r: (f"summary: {summary(work / 'lr').get('status')}; last.pt: {(work / 'lr/checkpoints/last.pt').exists()}; "
                              f"says a checkpoint is kept: {'checkpoint is kept' in r['last']}",
                              ("checkpoint is kept" in r["last"]) <= (work / "lr/checkpoints/last.pt").exists())),
        Case("6", "... then the same folder with `algo.learning_rate=1e-4` (the advice of that line)",
             [*tiny("algo.total_timesteps=256", "algo.learning_rate=1e-4"), f"hydra.run.dir={work / 'lr'}"], expect="0",
             check=lambda r: (f"summary: {summary(work / 'lr').get('status')}, global_step {summary(work / 'lr').get('global_step')}, "
                              f"resume_changes {summary(work / 'lr').get('resume_changes', '-')}",
                              summary(work / "lr").get("status") == "completed")),
        # 7. large graphs
        Case("7", "`env.num_nodes=20000` (the tiny sizes otherwise)", [*tiny("env.num_nodes=20000"), f"hydra.run.dir={work / 'big'}"],
             expect="0/1", check=memory_check, timeout=600),
        # 8. contract gaps
        *(faulty(fault) for fault in ("edge_count", "edge_outside", "fractional_links", "string_reward", "string_flag",
                                      "system_exit", "keyboard_interrupt")),
        *(Case("8", f"an env whose `optimal` reference return is {what} (tests/faulty_envs.py BadReferenceValueGraph)",
               [*gym, f"env.id={what}/Value-v0", "env.entry_point=faulty_envs:BadReferenceValueGraph",
                f"+env.kwargs.optimal={value}", f"hydra.run.dir={work / what}"],
               check=lambda r, what=what: (f"summary: {summary(work / what).get('status')}, headline eval/optimal_ratio="
                                           f"{summary(work / what).get('eval/optimal_ratio', '-')} (null: nan)",
                                           summary(work / what).get("status") != "completed"))
          for what, value in (("nan", "nan"), ("zero", "0"))),
        # 9. corrupt files
        Case("9", "a `\\xff` byte in metrics.jsonl, then the run again (resume)", [*TINY, f"hydra.run.dir={work / 'xff'}"],
             expect="0", prepare=xff_in_metrics,
             check=lambda r: (f"went through the resume (`resuming from` logged): {'resuming from' in r['stdout'] + r['stderr']}; summary: "
                              f"{summary(work / 'xff').get('status')}",
                              summary(work / "xff").get("status") == "completed" and "resuming from" in r["stdout"] + r["stderr"])),
        Case("9", "`\"global_step\": \"abc\"` in metrics.jsonl, then `wsa_lab.report`", [str(work / "abc"), "--no-plots", "--reps", "100"],
             module="wsa_lab.report", expect="0", prepare=abc_in_metrics,
             check=lambda r: ("the file named in a note: " + str("abc/a/metrics.jsonl" in r["stdout"] + r["stderr"]),
                              "abc/a/metrics.jsonl" in r["stdout"] + r["stderr"])),
        # 10. paths
        Case("10", "`hydra.job.name=../../x`", [*TINY, "hydra.job.name=../../x", f"hydra.run.dir={work / 'deep/a/b/run'}"],
             check=lambda r: (f"x.log outside the run folder: {[str(p.relative_to(work)) for p in work.rglob('x.log')] or 'none'}",
                              not any(work.rglob("x.log")))),
        Case("10", "`wsa_lab.report --out` a read-only folder", [str(base), "--no-plots", "--reps", "100", "--out", str(ro / "report")],
             module="wsa_lab.report", prepare=mount_ro,
             check=lambda r: (f"report written into the run folder instead: {(base / 'report').exists()}", True)),
        Case("10", "`hydra.run.dir=/proc/wsa_x`", [*TINY, "hydra.run.dir=/proc/wsa_x"]),
        Case("10", "`wsa_lab.evaluate table=<read-only folder>/t.md`", [str(base), *evaluate, f"table={ro}/t.md"],
             module="wsa_lab.evaluate", prepare=needs_ro,
             check=lambda r: (f"names `table`: {'table' in r['last']}; eval_in_distribution.json written first: "
                              f"{(base / 'eval_in_distribution.json').exists()}", "table" in r["last"])),
        Case("-", "(setup) a run with a graph_cnn weight file `gcn-<sha256[:8]>.pt` (case 3's twin.pt)",
             [*TINY, f"+ptm.graph_cnn.weights_path={weights}/WEIGHT", f"hydra.run.dir={work / 'w1'}"], expect="0", prepare=own_weights),
        Case("10", "... one byte of that file flipped, its mtime put back", [*TINY, f"+ptm.graph_cnn.weights_path={weights}/WEIGHT",
             f"hydra.run.dir={work / 'w2'}"], prepare=flip_a_byte,
             check=lambda r: (f"mtime put back, then: run folder made: {(work / 'w2' / 'checkpoints').exists()}",
                              not (work / "w2" / "checkpoints").exists())),
        # 11. the main command on a fresh machine
        Case("11", "`WSA_LAB_OFFLINE=1 python -m wsa_lab experiment=phase3_hybrid`, empty TORCH_HOME",
             ["experiment=phase3_hybrid", f"hydra.run.dir={work / 'offline'}"], env={"WSA_LAB_OFFLINE": "1"},
             check=lambda r: (f"run folder left: {(work / 'offline').exists()}", not (work / "offline").exists())),
        Case("11", "`python -m wsa_lab experiment=phase3_hybrid`, empty TORCH_HOME, no route to the server",
             ["experiment=phase3_hybrid", f"hydra.run.dir={work / 'no_route'}"], env=dead_proxy,
             check=lambda r: (f"run folder left: {(work / 'no_route').exists()}; file in TORCH_HOME: "
                              f"{[p.name for p in (work / 'empty_torch_home').rglob('*.pth*')] or 'none'}", not (work / "no_route").exists())),
        # 12.-16. results that could be mislabelled
        Case("12", "`wsa_lab.report` over a coverage run and a user-env run, both arm `wsa3_default`",
             [str(work / "mixed"), "--no-plots", "--reps", "100"], module="wsa_lab.report", prepare=mixed_envs),
        Case("12", "... the same with `--metric eval/return` (a metric both envs log)",
             [str(work / "mixed"), "--no-plots", "--reps", "100", "--metric", "eval/return"], module="wsa_lab.report",
             expect="0", check=lambda r: (f"arms: {arms(r['stdout'])}", len(arms(r["stdout"])) == 2)),
        Case("13", "`ptm=[graph_cnn,resnet18_imagenet] ptm.resnet18_imagenet.weights=random`",
             [*tiny("ptm=[graph_cnn,resnet18_imagenet]"), "ptm.resnet18_imagenet.weights=random", f"hydra.run.dir={work / 'random'}"],
             expect="0", check=lambda r: (f"summary ptm_names: {summary(work / 'random').get('ptm_names')}",
                                          "random" in str(summary(work / "random").get("ptm_names")))),
        Case("14", "an env whose final observation allows no node (tests/faulty_envs.py PickAllValueGraph)",
             [*gym, "env.id=pickall/Value-v0", "env.entry_point=faulty_envs:PickAllValueGraph", f"hydra.run.dir={work / 'pickall'}"],
             expect="0", check=lambda r: (f"summary: {summary(work / 'pickall').get('status')}",
                                          summary(work / "pickall").get("status") == "completed")),
        Case("15", "`tensorboard --help` from the venv", command=[str(tensorboard), "--help"], expect="0",
             check=lambda r: (f"prints its usage: {'usage' in r['stdout'].lower()}", "usage" in r["stdout"].lower())),
        Case("-", "(setup) a tiny run with the health logger, evaluated once (at the end)",
             [*tiny("logger=[console,health]", "evaluation.interval=1000", "ptm=[graph_cnn,resnet18_random]"), f"hydra.run.dir={work / 'tiny/run'}"], expect="0"),
        Case("16", "`wsa_lab.report` (with plots) of that run", [str(work / "tiny"), "--reps", "100"], module="wsa_lab.report",
             expect="0", check=lambda r: tiny_report(work / "tiny" / "report")),
        Case("16", "`wsa_lab.evaluate +eval_env.conditions.bigger={env:{num_nodes:30}}` without a new `eval_env.name`",
             [str(base), *evaluate, "+eval_env.conditions.bigger={env:{num_nodes:30}}"], module="wsa_lab.evaluate",
             check=lambda r: (f"eval_in_distribution.json written: {(base / 'eval_in_distribution.json').exists()}",
                              not (base / "eval_in_distribution.json").exists())),
    ], results


class Touch:
    """What an un-pickled file could run: un-pickling it touches `marker` (pathlib's, importable anywhere)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def arms(stdout: str) -> list[str]:
    """The arm names of a report's table (lines that start with the arm)."""
    return sorted({line.split("  ")[0].strip() for line in stdout.splitlines() if line.startswith("wsa3_default")})


def tiny_report(folder: Path) -> tuple[str, bool]:
    md = (folder / "report.md").read_text() if (folder / "report.md").exists() else ""
    curve, explained, said = (folder / "learning_curves.png").exists(), "Attention health:" in md, "no learning curves" in md
    return (f"learning_curves.png drawn: {curve}; report.md says why not: {said}; health column explained: {explained}",
            not curve and said and explained)


def run_round3(work: Path, env: dict[str, str], rows: list, only: Optional[set[str]] = None) -> None:
    cases, results = round3_cases(work)
    for c in cases:
        if only and c.issue not in only | {"-"}:
            continue
        if c.tests:
            rows.append((c, None, ("driven by " + c.tests, True)))
            continue
        try:
            if c.prepare and c.prepare() is False:
                raise Skip("skipped")
        except Skip as why:
            rows.append((c, None, (f"skipped: {why}", True)))
            print(f"{c.label}: skipped: {why}", flush=True)
            continue
        weight = next((work / "weights").glob("gcn-*.pt"), None)  # case 10's file: its name holds its hash
        cli = [a.replace("WEIGHT", weight.name) if weight else a for a in c.cli]
        cmd = c.command or [sys.executable, "-m", c.module, *cli]
        child_env = {**env, **c.env}
        if c.together:
            other = subprocess.Popen([sys.executable, "-m", c.module, *c.together], cwd=work, env=child_env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            result = run(cmd, work, child_env, timeout=c.timeout)
            result["stderr2"] = other.communicate(timeout=c.timeout)[1]
            result["rc2"] = other.returncode
            result["traceback"] |= "Traceback" in result["stderr2"]
            lines = [line for line in result["stderr2"].splitlines() if line.strip()]
            result["last"] = " / ".join(x for x in (result["last"], lines[-1] if lines else "") if x)
        else:
            result = run(cmd, work, child_env, timeout=c.timeout)
        if c.key:
            results[c.key] = result
        fact = c.check(result) if c.check else ("", True)
        rows.append((c, result, fact))
        print(f"{c.issue} {c.label}: rc={result['rc']}{'/' + str(result['rc2']) if 'rc2' in result else ''} {result['s']} s: "
              f"{result['last'][:200]} | {fact[0]}", flush=True)


def behaved(c: Case, r: dict) -> bool:
    """The documented exit code, no traceback, and an error ends in one `wsa_lab...: ` line."""
    codes = sorted([r["rc"], r["rc2"]]) if "rc2" in r else [r["rc"]]
    expected = [int(x) for x in c.expect.split("/")]
    good_code = codes == expected if "rc2" in r else codes[0] in expected
    return good_code and not r["traceback"] and (r["rc"] == 0 or r["last"].startswith("wsa_lab"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown tables here")
    parser.add_argument("--round", choices=["2", "3", "all"], default="all", help="which review's cases to run")
    parser.add_argument("--cases", default="", help="round 3: only these case numbers of the issue, e.g. 1,10 (setups run)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wsa_hostile_"))
    path = os.pathsep.join([str(REPO / "src"), str(REPO / "examples" / "graph_envs"), str(REPO / "tests"), str(REPO / "benchmarks"),
                            os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "WANDB_MODE": "offline", "TORCH_HOME": str(work / "empty_torch_home"), "PYTHONPATH": path}
    for name in ("HYDRA_FULL_ERROR", "WSA_LAB_OFFLINE", "WSA_LAB_ALLOW_UNVERIFIED_WEIGHTS", "WSA_LAB_TRUST_CONFIG"):
        env.pop(name, None)
    started = time.time()
    text = []
    try:
        if args.round in ("2", "all"):
            rows2: list = []
            round2(work, env, rows2)
            table = ["## Round 2", "", "| input | exit code | seconds | what it prints now (last line of stderr) | checked |",
                     "|---|---|---|---|---|"]
            for label, r, check in rows2:
                last = r["last"].replace("|", "\\|")
                table.append(f"| {label} | {r['rc']} | {r['s']} | {last}{' (after a traceback)' if r['traceback'] else ''} | {check} |")
            text += [*table, ""]
        if args.round in ("3", "all"):
            rows3: list = []
            run_round3(work, env, rows3, set(filter(None, args.cases.split(","))))
            table = ["## Round 3 (issue 22)", "",
                     "Expected: the documented exit code (1 for bad input, 0 where the case must now work; 0/1 for two jobs at once), "
                     "no traceback, an error in one line, and the checked fact as shown by `ok`. Not a row: case 16's README "
                     "times (not a command).", "",
                     "| # | input | exit code (expected) | seconds | what it prints now (last line of stderr) | checked | ok |",
                     "|---|---|---|---|---|---|---|"]
            for c, r, (fact, good) in rows3:
                if r is None:
                    table.append(f"| {c.issue} | {c.label} | - | - | - | {fact} | - |")
                    continue
                code = f"{r['rc']}/{r['rc2']}" if "rc2" in r else str(r["rc"])
                last = r["last"].replace("|", "\\|") + (" (after a traceback)" if r["traceback"] else "")
                ok = "yes" if behaved(c, r) and good else "**no**"
                table.append(f"| {c.issue} | {c.label} | {code} ({c.expect}) | {r['s']} | {last} | {fact.replace('|', '/')} | {ok} |")
            text += [*table, ""]
    finally:
        subprocess.run(["umount", str(work / "ro3")], check=False, capture_output=True)
    text.append(f"Wall time: {time.time() - started:.0f} s ({os.cpu_count()} CPUs).")
    out = "\n".join(text).replace(str(work), "<scratch>").replace(str(REPO), "<repo>")
    print(out)
    if args.out:
        args.out.write_text(f"# Hostile inputs, re-run (`python benchmarks/hostile_inputs.py`)\n\n{out}\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
