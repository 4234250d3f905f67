"""Re-run the hostile inputs of the round-2 robustness review through the real CLI; print what each one prints now.

    python benchmarks/hostile_inputs.py --out benchmarks/hostile_inputs.md     # ~5 min on 2 cores, as root

Each case starts `python -m wsa_lab ...` (or `wsa_lab.weights`, `wsa_lab.evaluate`) in a scratch folder with a
tiny config, and records the exit code, the seconds it took and the last line of stderr. The faults that need a
run to be interrupted at a chosen moment (SIGINT, SIGKILL, a deleted `metrics.jsonl`, a thread-count change on
resume, two writers) are in `tests/test_hostile_runs.py`; the cases here are the inputs. The read-only and
full-disk cases mount small tmpfs folders, so they need root (skipped otherwise, saying so).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = [
    "algo.total_timesteps=64", "algo.num_envs=4", "algo.num_steps=8", "algo.num_minibatches=2", "algo.update_epochs=1",
    "env.num_nodes=20", "env.knn_k=4", "env.num_sites=3", "evaluation.num_instances=4", "evaluation.interval=1",
    "checkpoint.interval=1", "logger=[console]", "logger.console.progress_bar=false", "ptm=[graph_cnn]",
]


def run(args: list[str], cwd: Path, env: dict[str, str], module: str = "wsa_lab", timeout: int = 300) -> dict:
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return {"rc": proc.returncode, "s": round(time.time() - start, 1), "last": lines[-1] if lines else "", "stdout": proc.stdout,
            "traceback": "Traceback" in proc.stderr, "stderr_lines": len(lines)}


def mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                                check=False).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wsa_hostile_"))
    env = {**os.environ, "WANDB_MODE": "offline", "TORCH_HOME": str(work / "empty_torch_home")}
    env.pop("HYDRA_FULL_ERROR", None)
    rows: list[tuple[str, dict, str]] = []

    def case(label: str, cli: list[str], module: str = "wsa_lab", check: str = "", **kw) -> dict:
        result = run(cli, work, kw.pop("env", env), module=module, **kw)
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

    table = ["| input | exit code | seconds | what it prints now (last line of stderr) | checked |", "|---|---|---|---|---|"]
    for label, r, check in rows:
        last = r["last"].replace("|", "\\|")
        table.append(f"| {label} | {r['rc']} | {r['s']} | {last}{' (after a traceback)' if r['traceback'] else ''} | {check} |")
    text = "\n".join(table)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
