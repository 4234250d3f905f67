"""The W&B comparison view of a sweep: `python -m wsa_lab.report <sweep> --wandb-workspace`.

The view is a W&B workspace (``wandb_workspaces``, W&B's own library: the `dashboard` extra) over exactly the runs the
report compared (their W&B run ids, from each folder's `wandb_run_id.txt`), grouped by arm (the flat `arm` of each
run's W&B config): the headline metric per arm (mean, and the spread over seeds as a band / error bar), each PTM's
attention weight (`wsa/attention/<ptm>`), the attention entropy, the state-dependence `wsa/attention_state_std` and
the health state `wsa/health/state` (the names `wsa_lab.tracking` logs).

Its description (the spec, below) is written to `wandb_workspace.json` in the report folder, always: it is plain JSON
and small, and :func:`build_workspace` turns it into the library's `Workspace`, whose models validate it, without
any network. The view is saved to W&B when online with a key (`WANDB_API_KEY` set, `WANDB_MODE` not offline);
otherwise (the default) one line says how to publish the file later:
`python -m wsa_lab.report.wandb_workspace <file>` (that machine needs only the file and a W&B login).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from wsa_lab.conf_files import yaml_defaults
from wsa_lab.errors import ConfigError, WsaLabError, first_line, print_error
from wsa_lab.report import Report
from wsa_lab.run.atomic import write_text_atomic
from wsa_lab.run.reader import read_resolved_config
from wsa_lab.tracking.tracker import unique_names
from wsa_lab.tracking.wandb_backend import RUN_ID_FILE

SPEC_FILE = "wandb_workspace.json"
SPEC_FORMAT = "wsa_lab.wandb_workspace/1"
X_AXIS = "global_step"  # every metric's step (wsa_lab.tracking.wandb_backend's define_metric)
GROUP_BY = "arm"  # the W&B config's flat `arm` (RunIdentity.flat_fields)
SPREAD = "stddev"  # over the seeds of an arm: the band of a line, the error bar of a bar
PANEL_KINDS = ("line", "bar")
OFFLINE_MODES = ("offline", "disabled", "dryrun")
INSTALL_HINT = "the W&B workspace needs wandb-workspaces: pip install 'wsa_lab[dashboard]'"


class WorkspaceError(WsaLabError):
    """The view cannot be built or saved (the message says why and what to do)."""


# ---------------------------------------------------------------------------------------------- the spec
def _line(title: str, metric: str) -> dict[str, Any]:
    return {"kind": "line", "title": title, "metrics": [metric]}


def workspace_spec(report: Report, name: str) -> dict[str, Any]:
    """The view of `report`'s compared runs, as plain JSON; a WorkspaceError when none of them went to W&B."""
    runs = [r for r in report.runs if r.included]
    logged = [r for r in runs if (r.path / RUN_ID_FILE).is_file()]
    if not logged:
        raise WorkspaceError(f"none of the {len(runs)} compared runs was logged to W&B (no {RUN_ID_FILE} in their "
                             "folders: logger.wandb.mode=disabled, or logger without wandb)")
    run_ids = [(r.path / RUN_ID_FILE).read_text().strip() for r in logged]
    targets = {_wandb_target(r.path) for r in logged}
    if len(targets) > 1:
        shown = ", ".join(sorted(f"{e or '<your entity>'}/{p}" for e, p in targets))
        raise WorkspaceError(f"the runs went to several W&B projects ({shown}); a workspace shows one project: give "
                             "the report the runs of one")
    ((entity, project),) = targets
    ptms = unique_names(list(dict.fromkeys(n for r in logged for n in r.summary.get("ptm_names") or [])))
    learned = any(r.summary.get("fusion") == "wsa" and len(r.summary.get("ptm_names") or []) >= 2 for r in logged)
    metric = report.metric
    sections = [{"name": f"Headline: {metric}", "panels": [
        _line(f"{metric} (mean and std over seeds, per arm)", metric),
        {"kind": "bar", "title": f"final {metric} (mean and std over seeds)", "metrics": [metric]},
    ]}]
    if ptms:
        sections.append({"name": "Attention", "panels": [
            *(_line(f"attention weight of {p}", f"wsa/attention/{p}") for p in ptms),
            _line("attention entropy", "wsa/attention_entropy"),
            _line("attention state dependence (std over states)", "wsa/attention_state_std"),
        ]})
    if learned:
        sections.append({"name": "Attention health", "panels": [
            _line("health state (0 balanced, 1 skewed, 2 collapsed, 3 static, 4 noisy)", "wsa/health/state"),
        ]})
    return {
        "format": SPEC_FORMAT, "name": name[:128], "entity": entity, "project": project,
        "run_ids": run_ids, "group_by": GROUP_BY, "x_axis": X_AXIS, "spread": SPREAD, "sections": sections,
    }


def _wandb_target(folder: Path) -> tuple[Optional[str], str]:
    """(entity, project) a run folder's W&B run went to: its config's `logger.wandb` (the run folder is data: only
    these two keys are read), a key it lacks from conf/logger/wandb.yaml."""
    chosen = (read_resolved_config(folder).get("logger") or {}).get("wandb") or {}
    default = yaml_defaults("logger/wandb.yaml", "wandb")
    entity, project = (chosen.get(k, default[k]) for k in ("entity", "project"))
    return (None if entity is None else str(entity)), str(project)


# ---------------------------------------------------------------------------------------------- the library
def _library() -> tuple[Any, Any, Any]:
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
        from wandb_workspaces import expr
    except ImportError as exc:
        raise WorkspaceError(INSTALL_HINT) from exc
    return ws, wr, expr


def build_workspace(spec: Any, where: str = "the spec") -> Any:
    """The library's `Workspace` for `spec` (nothing saved, no network); its own models validate every field, and a
    spec they refuse (or that is not one of ours) is a one-line WorkspaceError."""
    ws, wr, expr = _library()
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise WorkspaceError(f"{where} is not a wsa_lab W&B workspace spec (no \"format\": \"{SPEC_FORMAT}\")")
    try:
        def panel(p: dict[str, Any]) -> Any:
            if p["kind"] not in PANEL_KINDS:
                raise ValueError(f"panel kind {p['kind']!r} is not one of {list(PANEL_KINDS)}")
            agg = {"groupby_aggfunc": "mean", "groupby_rangefunc": spec["spread"]}
            if p["kind"] == "line":
                return wr.LinePlot(title=p["title"], x=spec["x_axis"], y=list(p["metrics"]), **agg)
            return wr.BarPlot(title=p["title"], metrics=list(p["metrics"]), **agg)

        return ws.Workspace(
            entity=spec["entity"] or "", project=spec["project"], name=spec["name"],
            settings=ws.WorkspaceSettings(x_axis=spec["x_axis"], max_runs=max(10, len(spec["run_ids"]))),
            runset_settings=ws.RunsetSettings(
                filters=expr.And(expr.Metric("ID").isin(list(spec["run_ids"]))),  # exactly the compared runs
                groupby=[expr.Config(spec["group_by"])],
            ),
            sections=[
                ws.Section(name=s["name"], panels=[panel(p) for p in s["panels"]], is_open=True) for s in spec["sections"]
            ],
        )
    except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise WorkspaceError(f"{where} does not make a W&B workspace ({_why(exc)})") from exc


def _why(exc: Exception) -> str:
    """One line: the missing key, pydantic's first complaint (`groupby_rangefunc: Input should be ...`), the message."""
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    errors = getattr(exc, "errors", None)  # pydantic.ValidationError: the library's models refused a field
    if callable(errors) and errors():
        first = errors()[0]
        return f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg', '')}"
    return first_line(exc)


def online() -> bool:
    """W&B is online here with a key: `WANDB_API_KEY` set and `WANDB_MODE` not offline/disabled."""
    return bool(os.environ.get("WANDB_API_KEY")) and os.environ.get("WANDB_MODE", "").lower() not in OFFLINE_MODES


def publish(spec: dict[str, Any], where: str = "the spec") -> str:
    """Save the view to its W&B project; its URL. Needs a W&B login (`wandb login` or WANDB_API_KEY)."""
    if os.environ.get("WANDB_MODE", "").lower() in OFFLINE_MODES:
        raise WorkspaceError(f"W&B is switched off here (WANDB_MODE={os.environ['WANDB_MODE']}); unset it to publish")
    from wsa_lab.tracking.probe import TrackingError, check_reachable

    workspace = build_workspace(spec, where)
    server = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        check_reachable(server)  # seconds, not wandb's ~100 s of retries
    except TrackingError as exc:
        reason = getattr(exc.__cause__, "strerror", None) or type(exc.__cause__).__name__
        raise WorkspaceError(f"cannot reach the W&B server {server} ({reason}); publish {where} later from a machine "
                             f"with network: python -m wsa_lab.report.wandb_workspace {where}") from exc
    try:
        if not workspace.entity:  # logger.wandb.entity was null: the runs went to the login's default entity
            import wandb

            workspace.entity = wandb.Api().default_entity
        workspace.save()
        return str(workspace.url)
    except Exception as exc:  # noqa: BLE001 - W&B raises many types (auth, GraphQL, HTTP); each is one line here
        raise WorkspaceError(f"W&B refused the workspace of {where} ({type(exc).__name__}: {first_line(exc)}); check `wandb "
                             "login` and the project's entity") from exc


# ---------------------------------------------------------------------------------------------- the commands
def write_workspace(report: Report, out: Path, name: str) -> str:
    """`--wandb-workspace`: write the spec to `out/wandb_workspace.json` (atomically), publish it when online; the
    one line to print."""
    spec = workspace_spec(report, name)
    build_workspace(spec)  # validated before anything is written
    path = write_text_atomic(out / SPEC_FILE, json.dumps(spec, indent=2) + "\n", "--out")
    if online():
        return f"W&B workspace saved: {publish(spec, str(path))} (spec: {path})"
    why = f"WANDB_MODE={os.environ['WANDB_MODE']}" if os.environ.get("WANDB_API_KEY") else "WANDB_API_KEY is not set"
    return (f"W&B workspace spec written to {path} (offline: {why}); publish it with: "
            f"python -m wsa_lab.report.wandb_workspace {path}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m wsa_lab.report.wandb_workspace <spec.json>`: publish a spec written offline."""
    parser = argparse.ArgumentParser(
        prog="python -m wsa_lab.report.wandb_workspace",
        description="Save a W&B workspace spec written by `python -m wsa_lab.report <sweep> --wandb-workspace` to "
        "its W&B project (needs `wandb login` or WANDB_API_KEY, and the network).",
    )
    parser.add_argument("spec", type=Path, help=f"the {SPEC_FILE} file")
    args = parser.parse_args(argv)
    try:
        try:
            spec = json.loads(args.spec.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {args.spec} ({getattr(exc, 'strerror', None) or exc})") from exc
        print(f"W&B workspace saved: {publish(spec, str(args.spec))}")
    except WsaLabError as exc:
        return print_error("wsa_lab.report.wandb_workspace", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
