"""``hmnas export``: ONNX files of a derived network, checked and compared with PyTorch in ONNX Runtime.

``model.onnx`` has a dynamic batch axis, the architecture JSON and the input config as
``metadata_props``, and passes ``onnx.checker.check_model(..., full_check=True)``. ``parity.json``
records the largest absolute difference to PyTorch on random and real inputs; fp32 must stay
within 1e-4. ``--fp16`` adds ``model_fp16.onnx`` (half weights and I/O) with its own tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmnas_nni.format.architecture import ArchitectureError
from hmnas_nni.format.files import OutputExists, guard_outputs, publish, sha256, write_json

from .hmnas_timm import HmnasNet, WeightsError, load_weights, resolve_architecture

DEFAULT_OPSET = 21
FP32_TOL = 1e-4
# Half precision keeps ~3 decimal digits: allow 1e-2 absolute plus 1e-2 of the logits' scale.
FP16_ABS_TOL = 1e-2
FP16_REL_TOL = 1e-2
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OUTPUTS = ("model.onnx", "model_fp16.onnx", "parity.json")


class ExportError(RuntimeError):
    """A network or file that cannot be exported or checked; the message names the cause and the fix."""


# --------------------------------------------------------------------------- export
def _unsupported_operator(err: BaseException) -> str | None:
    """The ATen operator named in an exporter error, when there is one."""
    text = "".join(str(e) for e in _chain(err))
    for pattern in (r"OpOverload\(op='([\w.:]+)'", r"target=torch\.ops\.([\w.]+)", r"(aten::\w+)", r"(aten\.\w+)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return None


def _chain(err: BaseException) -> list[BaseException]:
    """An exception with its causes and contexts, outermost first."""
    out: list[BaseException] = []
    while err is not None and err not in out:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


@contextlib.contextmanager
def _quiet_exporter_logs() -> Any:
    """Keep the exporter's and optimizer's INFO chatter out of the CLI's log while exporting."""
    prefixes = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export")
    names = [n for n in list(logging.root.manager.loggerDict) if n.startswith(prefixes)] + list(prefixes)
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def export_onnx(model: torch.nn.Module, path: str | Path, input_size: tuple[int, int, int], opset: int = DEFAULT_OPSET,
                half: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """Export ``model`` (eval mode) to ``path`` with a dynamic batch axis and metadata, then run the full checker."""
    import onnx

    path = Path(path)
    model = model.eval()
    dtype = torch.float16 if half else torch.float32
    example = torch.randn(2, *input_size, dtype=dtype)
    batch = torch.export.Dim("batch", min=1, max=65536)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), _quiet_exporter_logs(), torch.no_grad():
            program = torch.onnx.export(
                model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                dynamo=True, dynamic_shapes=({0: batch},), external_data=False, verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - exporter errors come in many classes; all end here
        op = _unsupported_operator(e)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if op:
            raise ExportError(
                f"cannot export to ONNX opset {opset}: operator {op} has no ONNX translation; replace that op in the "
                "search space, or try another --opset"
            ) from None
        raise ExportError(f"cannot export to ONNX opset {opset}: {first[:300]}") from None
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "hmnas-nni"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".onnx", dir=path.parent)
    with open(fd, "wb") as f:
        f.write(proto.SerializeToString())
    try:
        onnx.checker.check_model(tmp, full_check=True)
        publish(tmp, path)
    finally:
        if Path(tmp).exists():
            Path(tmp).unlink()
    return path


def load_onnx(path: str | Path) -> Any:
    """Load and fully check an ONNX file, with one-line errors for missing or corrupt files."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX file {path} does not exist; write it with `hmnas export ARCH --weights W --out DIR`")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors and checker errors alike
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ExportError(f"ONNX file {path} is corrupt or not an ONNX model ({type(e).__name__}: {msg}); "
                          "re-run `hmnas export` to write it again") from None
    return proto


def ort_session(path: str | Path, providers: list[Any] | None = None, threads: int | None = None,
                spinning: bool = True) -> Any:
    """An ONNX Runtime session on ``providers`` (default: CPU only), raising a one-line error on failure.

    ``spinning=False`` stops idle worker threads from busy-waiting, which costs little for checks
    and keeps a shared machine responsive; benchmarks keep ORT's default.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        msg = str(e).strip().splitlines()[0][:300]
        raise ExportError(f"ONNX Runtime cannot load {path}: {msg}") from None


def metadata_of(proto: Any) -> dict[str, str]:
    """``metadata_props`` of an ONNX model as a dict."""
    return {p.key: p.value for p in proto.metadata_props}


# --------------------------------------------------------------------------- parity
def parity(session: Any, model: torch.nn.Module, inputs: dict[str, torch.Tensor], half: bool = False,
           batch_size: int = 64) -> dict[str, Any]:
    """Largest absolute difference (and its scale) between ORT and fp32 PyTorch on each named input set."""
    model = model.eval().float()
    name = session.get_inputs()[0].name
    out: dict[str, Any] = {}
    for label, x in inputs.items():
        diffs, scale, agree, n = [], 0.0, 0, 0
        for chunk in x.split(batch_size):
            with torch.no_grad():
                ref = model(chunk.float()).numpy()
            feed = chunk.half().numpy() if half else chunk.float().numpy()
            got = session.run(None, {name: feed})[0].astype(np.float32)
            if got.shape != ref.shape:
                raise ExportError(f"ONNX output shape {got.shape} differs from PyTorch {ref.shape} on {label} inputs")
            diffs.append(float(np.abs(got - ref).max()))
            scale = max(scale, float(np.abs(ref).max()))
            agree += int((got.argmax(1) == ref.argmax(1)).sum()) if ref.ndim == 2 else 0
            n += len(chunk)
        out[label] = {"images": n, "max_abs_diff": max(diffs), "max_abs_logit": scale,
                      "top1_agreement": agree / n if n else None}
    return out


def _real_inputs(dataset: str | None, data_root: str | None, limit: int) -> tuple[torch.Tensor | None, str]:
    """Test-set images of ``dataset`` (normalised as in training), or ``None`` with the reason."""
    if not dataset:
        return None, "no dataset named (pass --dataset, or export an arch.json written by `hmnas retrain`)"
    from hmnas_nni.search.data import load_dataset

    _, test, info = load_dataset(dataset, root=data_root)
    return test.tensors[0][:limit], f"{info.name} test set, first {min(limit, len(test))} images"


# --------------------------------------------------------------------------- command
def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hmnas export`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "export", help="export a trained architecture to ONNX and check parity with PyTorch",
        description="Write DIR/model.onnx (dynamic batch, metadata) and DIR/parity.json: ONNX Runtime vs PyTorch "
                    f"on random and real inputs (fp32 max abs diff <= {FP32_TOL:g}).",
    )
    p.add_argument("arch", help="architecture JSON (the arch.json beside the weights, from `hmnas retrain`)")
    p.add_argument("--weights", required=True, help="model.safetensors written by `hmnas retrain`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--fp16", action="store_true", help="also write model_fp16.onnx (half precision) and check it")
    p.add_argument("--dataset", default=None, help="dataset for real-input parity (default: the arch's dataset)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--real-images", type=int, default=256, help="test images used for real-input parity")
    p.add_argument("--random-images", type=int, default=16, help="random images used for parity")
    p.add_argument("--force", action="store_true", help="overwrite results already in --out")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    """CLI entry: export and check; exit 2 on bad inputs, 1 when parity fails."""
    try:
        report = export_checked(args.arch, args.weights, args.out, opset=args.opset, fp16=args.fp16,
                                dataset=args.dataset, data_root=args.data_root, real_images=args.real_images,
                                random_images=args.random_images, force=args.force)
    except (ExportError, ArchitectureError, WeightsError, OutputExists, FileNotFoundError, ValueError) as e:
        print(f"hmnas export: error: {e}", file=sys.stderr)
        return 2
    for m in report["models"]:
        worst = max(v["max_abs_diff"] for v in m["parity"].values())
        print(f"{m['file']}: max abs diff {worst:.3g} (tolerance {m['tolerance']:.3g}) "
              f"{'ok' if m['passed'] else 'FAILED'}")
    if not report["passed"]:
        print(f"hmnas export: error: parity check failed; see {Path(args.out) / 'parity.json'}", file=sys.stderr)
        return 1
    return 0


def export_checked(arch_path: str | Path, weights: str | Path, out: str | Path, opset: int = DEFAULT_OPSET,
                   fp16: bool = False, dataset: str | None = None, data_root: str | None = None,
                   real_images: int = 256, random_images: int = 16, force: bool = False,
                   seed: int = 0) -> dict[str, Any]:
    """Build the model with its weights, export fp32 (and fp16), check them and write ``parity.json``."""
    import onnx
    import onnxruntime as ort

    arch, extras = resolve_architecture(arch_path)
    model = HmnasNet(arch.to_dict() | extras)
    load_weights(model, weights)  # one-line errors: missing, truncated, another architecture
    model.eval()
    out = guard_outputs(out, OUTPUTS, force)
    dataset = dataset or extras.get("dataset", {}).get("name")
    real, real_note = _real_inputs(dataset, data_root, real_images)
    c, h, w = model.pretrained_cfg["input_size"]
    if real is not None and tuple(real.shape[1:]) != (c, h, w):
        raise ExportError(f"dataset {dataset} images are {tuple(real.shape[1:])}, the model expects {(c, h, w)}; "
                          "pass the dataset the weights were trained on")
    gen = torch.Generator().manual_seed(seed)
    inputs = {"random": torch.randn(random_images, c, h, w, generator=gen)}
    if real is not None:
        inputs["real"] = real
    input_config = {k: model.pretrained_cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")}
    input_config |= {"input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "layout": "NCHW",
                     "normalized": "inputs are (x - mean) / std, x in [0, 1]", "dataset": dataset}
    meta = {
        "hmnas.architecture": json.dumps(arch.to_dict()),
        "hmnas.input_config": json.dumps(input_config),
        "hmnas.weights_sha256": sha256(weights),
        "hmnas.num_classes": str(model.num_classes),
    }
    models = []
    variants = [("model.onnx", False)] + ([("model_fp16.onnx", True)] if fp16 else [])
    for name, half in variants:
        t0 = time.time()
        net = model
        if half:
            net = HmnasNet(arch.to_dict() | extras)
            net.load_state_dict(model.state_dict())
            net = net.half().eval()
        export_onnx(net, out / name, (c, h, w), opset=opset, half=half, metadata=meta | {"hmnas.precision":
                                                                                          "fp16" if half else "fp32"})
        export_s = time.time() - t0
        load_onnx(out / name)
        session = ort_session(out / name, threads=torch.get_num_threads(), spinning=False)
        res = parity(session, model, inputs, half=half)
        scale = max(v["max_abs_logit"] for v in res.values())
        tol = FP16_ABS_TOL + FP16_REL_TOL * scale if half else FP32_TOL
        passed = all(v["max_abs_diff"] <= tol for v in res.values())
        models.append({"file": name, "precision": "fp16" if half else "fp32", "opset": opset,
                       "bytes": (out / name).stat().st_size, "sha256": sha256(out / name),
                       "export_seconds": round(export_s, 2), "provider": session.get_providers()[0],
                       "tolerance": tol, "parity": res, "passed": passed})
    report = {
        "passed": all(m["passed"] for m in models),
        "models": models,
        "inputs": {"random": f"{random_images} standard-normal images, seed {seed}", "real": real_note},
        "arch": str(arch_path), "weights": str(weights), "weights_sha256": meta["hmnas.weights_sha256"],
        "input_config": input_config,
        "tolerance_rule": {"fp32": FP32_TOL, "fp16": f"{FP16_ABS_TOL} + {FP16_REL_TOL} * max |logit|"},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "checker": "onnx.checker.check_model(full_check=True) passed for every file",
    }
    write_json(out / "parity.json", report)
    return report
