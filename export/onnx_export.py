"""``hmnas export``: ONNX files of a derived network, checked and compared with PyTorch in ONNX Runtime.

``model.onnx`` has a dynamic batch axis, the architecture JSON and the input config as
``metadata_props``, and passes ``onnx.checker.check_model(..., full_check=True)``. ``parity.json``
records the largest absolute difference to PyTorch on random and real inputs; fp32 must stay
within 1e-4. ``--fp16`` adds ``model_fp16.onnx`` (half weights and I/O) with its own tolerance.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmnas_nni.format.errors import CheckFailed, UsageError
from hmnas_nni.format.files import atomic_path, sha256, write_json
from hmnas_nni.format.outputs import OutputFolder
from hmnas_nni.format.weights import SUPERNET_FORMAT

from .derived_model import derived_model
from .hmnas_timm import load_weights, resolve_architecture

DEFAULT_OPSET = 21
#: The oldest opset torch's exporter writes (it silently writes 18 for anything older).
MIN_OPSET = 18
FP32_TOL = 1e-4
# Half precision keeps ~3 decimal digits: allow 1e-2 absolute plus 1e-2 of the logits' scale.
FP16_ABS_TOL = 1e-2
FP16_REL_TOL = 1e-2
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OUTPUTS = ("model.onnx", "model_fp16.onnx", "parity.json")


class ExportError(UsageError):
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
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ExportError(f"asked for ONNX opset {opset}, the exporter wrote opset {written}; pass --opset in "
                          f"{MIN_OPSET}..{max_opset()}")
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "hmnas-nni"
    with atomic_path(path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def max_opset() -> int:
    """The newest opset the installed ``onnx`` knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def check_opset(opset: Any) -> int:
    """Refuse an opset the exporter would not write as asked (it writes 18 for anything older)."""
    top = max_opset()
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= top:
        raise ExportError(f"--opset {opset!r} cannot be written: torch's ONNX exporter writes opsets {MIN_OPSET} to "
                          f"{top} (the installed onnx's newest); pass --opset in {MIN_OPSET}..{top}")
    return opset


def refuse_supernet(weights: str | Path, arch_path: Any) -> None:
    """A search's ``supernet.safetensors`` holds every candidate op: say how to make the network's weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            meta, keys = dict(f.metadata() or {}), list(f.keys())  # noqa: SIM118 (safe_open has no __iter__)
    except Exception:  # noqa: BLE001 - unreadable files get their own message from load_weights
        return
    looks_like = meta.get("format") == SUPERNET_FORMAT or ("format" not in meta and keys and
                                                          all(k.startswith("net.") for k in keys))
    if looks_like:
        folder = Path(weights).parent
        arch = folder / "arch.json" if (folder / "arch.json").is_file() else arch_path
        raise ExportError(f"{weights} is a search's supernet (every candidate op), not a network's weights; make "
                          f"them first: hmnas retrain {arch} --from-supernet {folder} --epochs 0 --out "
                          f"{folder}-model, then pass {folder}-model/arch.json and {folder}-model/model.safetensors")


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
def export_checked(arch_path: str | Path, weights: str | Path, out: str | Path, opset: int = DEFAULT_OPSET,
                   fp16: bool = False, dataset: str | None = None, data_root: str | None = None,
                   real_images: int = 256, random_images: int = 16, force: bool = False,
                   seed: int = 0) -> dict[str, Any]:
    """Build the model with its weights, export fp32 (and fp16), check them and write ``parity.json``.

    The ONNX files and ``parity.json`` appear together when every file is written and checked; an
    interrupted or failed export leaves ``out`` as it was.
    """
    check_opset(opset)
    for name, value, low in (("real-images", real_images, 0), ("random-images", random_images, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ExportError(f"--{name} must be an integer >= {low}, got {value!r}")
    refuse_supernet(weights, arch_path)
    arch, extras = resolve_architecture(arch_path)
    model = derived_model(arch.to_dict() | extras)
    load_weights(model, weights)  # one-line errors: missing, truncated, non-finite, another architecture
    model.eval()
    dataset = dataset or extras.get("dataset", {}).get("name")
    inputs, real_note = _parity_inputs(model, dataset, data_root, real_images, random_images, seed)
    input_config = {k: model.pretrained_cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")}
    input_config |= {"input_name": INPUT_NAME, "output_name": OUTPUT_NAME, "layout": "NCHW",
                     "normalized": "inputs are (x - mean) / std, x in [0, 1]", "dataset": dataset}
    meta = {
        "hmnas.architecture": json.dumps(arch.to_dict()),
        "hmnas.input_config": json.dumps(input_config),
        "hmnas.weights_sha256": sha256(weights),
        "hmnas.num_classes": str(model.num_classes),
    }
    with OutputFolder(out, "hmnas export", force=force) as folder:
        variants = [("model.onnx", False)] + ([("model_fp16.onnx", True)] if fp16 else [])
        models = [_export_variant(model, arch, extras, folder.staged(name), half, opset, meta, inputs)
                  for name, half in variants]
        report = {
            "passed": all(m["passed"] for m in models),
            "models": models,
            "inputs": {"random": f"{random_images} standard-normal images, seed {seed}", "real": real_note},
            "arch": str(arch_path), "weights": str(weights), "weights_sha256": meta["hmnas.weights_sha256"],
            "input_config": input_config,
            "tolerance_rule": {"fp32": FP32_TOL, "fp16": f"{FP16_ABS_TOL} + {FP16_REL_TOL} * max |logit|"},
            "versions": _versions(),
            "checker": "onnx.checker.check_model(full_check=True) passed for every file",
        }
        write_json(folder.staged("parity.json"), report)
        folder.commit("parity.json")
    return report


def _parity_inputs(model: torch.nn.Module, dataset: str | None, data_root: str | None, real_images: int,
                   random_images: int, seed: int) -> tuple[dict[str, torch.Tensor], str]:
    """The random (and, with a dataset, real) images parity is measured on, and a note on where they came from."""
    c, h, w = model.pretrained_cfg["input_size"]
    real, real_note = _real_inputs(dataset, data_root, real_images)
    if real is not None and tuple(real.shape[1:]) != (c, h, w):
        raise ExportError(f"dataset {dataset} images are {tuple(real.shape[1:])}, the model expects {(c, h, w)}; "
                          "pass the dataset the weights were trained on")
    gen = torch.Generator().manual_seed(seed)
    inputs = {"random": torch.randn(random_images, c, h, w, generator=gen)}
    if real is not None and len(real):
        inputs["real"] = real
    return inputs, real_note


def _export_variant(model: torch.nn.Module, arch: Any, extras: dict[str, Any], path: Path, half: bool, opset: int,
                    meta: dict[str, str], inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Export one precision to ``path``, check it, measure its parity; its entry in ``parity.json``."""
    t0 = time.time()
    net = model
    if half:
        net = derived_model(arch.to_dict() | extras)
        net.load_state_dict(model.state_dict())
        net = net.half().eval()
    export_onnx(net, path, tuple(model.pretrained_cfg["input_size"]), opset=opset, half=half,
                metadata=meta | {"hmnas.precision": "fp16" if half else "fp32"})
    export_s = time.time() - t0
    proto = load_onnx(path)
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    session = ort_session(path, threads=torch.get_num_threads(), spinning=False)
    res = parity(session, model, inputs, half=half)
    scale = max(v["max_abs_logit"] for v in res.values())
    tol = FP16_ABS_TOL + FP16_REL_TOL * scale if half else FP32_TOL
    return {"file": path.name, "precision": "fp16" if half else "fp32", "opset": written,
            "bytes": path.stat().st_size, "sha256": sha256(path), "export_seconds": round(export_s, 2),
            "provider": session.get_providers()[0], "tolerance": tol, "parity": res,
            "passed": all(v["max_abs_diff"] <= tol for v in res.values())}


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime as ort

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}


class ParityFailed(CheckFailed):
    """An exported file whose outputs differ from PyTorch's beyond the tolerance (``parity.json`` says by how much)."""
