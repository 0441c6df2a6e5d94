"""What `hardened-model up` shows: progress bars for long stages, then a summary (rich)."""
from __future__ import annotations

import json

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hardened_model.spec import HardenedModel


def _fmt(value) -> str:
    return "—" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


class UpConsole:
    def __init__(self, model: HardenedModel, console: Console | None = None):
        self.model = model
        self.console = console or Console(stderr=False, highlight=False)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                                 TimeElapsedColumn(), console=self.console, transient=False)
        self.task = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def print(self, text: str) -> None:
        self.console.print(text)

    def event(self, kind: str, **kw) -> None:
        p = self.progress
        if kind == "warning":
            p.console.print(f"[bold yellow]warning:[/] {kw['message']}")
        elif kind == "info":
            p.console.print(f"[dim]{kw['message']}[/]")
        elif kind == "train-begin":
            self.task = p.add_task(f"train {self.model.metadata.name} ({kw['version']})", total=kw["epochs"],
                                   detail="loading data")
        elif kind == "train-sanitized" and self.task is not None:
            p.update(self.task, detail=f"sanitized: removed {kw.get('removed', 0)} suspect examples")
        elif kind == "train-epoch" and self.task is not None:
            eps = kw.get("epsilon")
            detail = f"loss {kw['loss']:.3f} acc {kw['accuracy']:.3f}" + (f" ε {eps:.2f}" if eps is not None else "")
            p.update(self.task, completed=kw["epoch"], detail=detail)
        elif kind == "train-evaluated" and self.task is not None:
            p.update(self.task, detail=f"evaluated: clean {_fmt(kw.get('cleanAccuracy'))}, "
                                       f"robust {_fmt(kw.get('robustAccuracy'))}")
        elif kind == "train-result":
            p.console.print(f"trained and signed: digest [bold]{kw['digest'][:16]}…[/]")
        elif kind == "verify-start":
            p.console.print("verifying the signature and the gates …")
        elif kind == "verify-done":
            ok = kw.get("exitCode") == 0
            p.console.print(("[green]verified[/]" if ok else "[red]refused[/]") + f": {kw.get('reason')}")
            for gate in kw.get("gates", []):
                p.console.print(f"  {gate}")
        elif kind == "serve-start":
            p.console.print("starting rate-limit → validation → model server …")

    def failed(self, exc) -> None:
        self.console.print(Panel(f"[bold red]stage {exc.stage} failed[/]\n{exc.reason}\n\n"
                                 "Nothing is served; processes that were started have been stopped.",
                                 title="hardened-model up", border_style="red"))

    def summary(self, r) -> None:
        spec = self.model.spec
        t = Table(show_header=False, box=None, padding=(0, 2))
        m = r.metrics or {}
        t.add_row("model", f"{self.model.metadata.name} version {r.version}" + ("" if r.trained else " (reused)"))
        t.add_row("clean accuracy", _fmt(m.get("cleanAccuracy")))
        t.add_row("robust accuracy", f"{_fmt(m.get('robustAccuracy'))}  (ART {', '.join(spec.evaluation.attacks)}, "
                                     f"L∞ eps {spec.evaluation.eps})")
        t.add_row("privacy", f"ε = {_fmt(m.get('epsilon'))}, δ = {spec.training.privacy.target_delta}"
                  if spec.training.privacy.enabled else "not trained with DP-SGD")
        t.add_row("membership AUC", _fmt(m.get("membershipAUC")) + "  (0.5 = chance)")
        if m.get("recall") is not None:  # tabular: the positive class (data.positiveClass)
            t.add_row(f"class {spec.data.positive_class!r}",
                      f"recall {_fmt(m.get('recall'))}, precision {_fmt(m.get('precision'))}, PR-AUC "
                      f"{_fmt(m.get('prAUC'))}, robust recall {_fmt(m.get('robustRecall'))}")
        t.add_row("signature", f"verified, digest {r.digest}")
        t.add_row("gates", "passed" if r.gates_passed else "[bold yellow]FAILED[/] (served: signing.mode Warn)")
        t.add_row("endpoint", f"{r.url}/v2/models/{self.model.metadata.name}/infer")
        if r.api_key_file:
            t.add_row("API key file", str(r.api_key_file))
        if r.ca_file:
            t.add_row("TLS CA", str(r.ca_file))
        t.add_row("report", str(r.report))
        example = example_request(spec, r.example_row)
        credential = (f"-H \"Authorization: Bearer $(head -1 {r.api_key_file} | cut -d' ' -f1)\" " if r.api_key_file
                      else "-H \"Authorization: Bearer $TOKEN\" ")
        tls = (f"--cacert {r.ca_file} " if r.ca_file else "") + (
            f"--cert {r.client_cert} --key {r.client_key} " if r.client_cert else "")
        curl = (f"curl -s {tls}{credential}-H 'Content-Type: application/json' "
                f"{r.url}/v2/models/{self.model.metadata.name}/infer -d '{json.dumps(example)}'")
        self.console.print(Panel(t, title="hardened-model up: serving", border_style="green"))
        for w in r.warnings:
            self.console.print(f"[bold yellow]warning:[/] {w}")
        self.console.print("example request:")
        self.console.print(curl, soft_wrap=True)


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def example_request(spec, row: list[float] | None = None) -> dict:
    """A request the endpoint accepts: zeros for an image model; for a tabular model one named input per
    feature, with ``row`` (numbers; a category as its vocabulary index), e.g. the training means."""
    if spec.data.format != "tabular":
        return {"inputs": [{"name": "input", "shape": [1, *spec.model.input_shape], "datatype": "FP32",
                            "data": [0.0] * _size(spec.model.input_shape)}]}
    inputs = []
    for j, f in enumerate(spec.data.features):
        value = row[j] if row else 0.0
        if f.type == "category":
            inputs.append({"name": f.name, "shape": [1], "datatype": "BYTES",
                           "data": [f.vocabulary[int(round(value))]]})
        else:
            v = round(value) if f.type == "integer" else round(value, 4)
            inputs.append({"name": f.name, "shape": [1], "datatype": "INT64" if f.type == "integer" else "FP64",
                           "data": [v]})
    return {"inputs": inputs}
