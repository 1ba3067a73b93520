"""Model and tokenizer loading, device and dtype choice, and finding the decoder body.

``ches`` needs the hidden state fed to the unembedding (after the final norm). For Hugging Face
causal LMs that is ``model.base_model(...).last_hidden_state``, the same tensor as
``hidden_states[-1]`` of the full model, so the LM head is never run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..data.hub import offline_unless_reachable
from ..data.paths import check_folder_exists
from ..data.tokens import token_text
from ..errors import ChesError, one_line
from ..options import DTYPE_NAMES, check_dtype
from .batches import CUDA_PAD_MULTIPLE

CPU_BATCH_TOKENS = 1024  # measured: small batches run fastest on CPUs (docs/performance.md)
#: the torch dtype of each name of :data:`ches.options.DTYPE_NAMES` (its aliases are read by :func:`resolve_dtype`)
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass(frozen=True)
class LoadedModel:
    """What the engine needs from a model: its body, where it runs, and in which precision."""

    model: torch.nn.Module
    body: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    hidden_size: int
    vocab_size: int
    name: str
    embedding_rows: int | None = None  # ids 0..embedding_rows-1 have an input embedding (None: not known)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means CUDA when available, else CPU.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ChesError(f"device={device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'.") from None
    if resolved.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise ChesError(f"device={device!r}, but this machine has no usable CUDA device (torch "
                            f"{torch.__version__}); use device='cpu' or install a CUDA build of torch.")
        if resolved.index is not None and resolved.index >= available:
            raise ChesError(f"device={device!r}, but this machine has {available} CUDA device(s) (0..{available - 1}).")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``dtype`` as a ``torch.dtype``; ``None`` means bfloat16 on CUDA and float32 elsewhere.

    >>> resolve_dtype(None, torch.device("cpu")), resolve_dtype("bf16", torch.device("cpu"))
    (torch.float32, torch.bfloat16)
    """
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    return DTYPES[check_dtype(dtype)]


def text_config(model: torch.nn.Module):
    """The config that describes the decoder (the text part of multimodal configs)."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def has_sliding_window(model: torch.nn.Module) -> bool:
    """Whether any attention layer of ``model`` (or of a model body) sees only a sliding window of keys."""
    config = getattr(getattr(model, "_orig_mod", model), "config", None)
    if config is None:
        return False
    config = getattr(config, "text_config", None) or config
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return any("sliding" in str(kind) for kind in layer_types)
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True) is not False


def decoder_body(model: torch.nn.Module) -> torch.nn.Module:
    """The part of a causal LM that produces the last (final-normed) hidden states: ``model.base_model``."""
    body = getattr(model, "base_model", None)
    if body is None:
        raise ChesError(f"{type(model).__name__} is not a Hugging Face PreTrainedModel (it has no base_model).")
    return body


def load_model(
    model,
    tokenizer=None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    model_kwargs: dict | None = None,
) -> LoadedModel:
    """Load (or adopt) a causal LM and its tokenizer for scoring.

    A model given as a string is a local folder or Hub id, loaded with ``dtype`` on ``device`` and
    ``model_kwargs`` passed to ``from_pretrained`` (``device_map``/``max_memory``/``offload_folder`` spread
    a model larger than one device; ``revision``, ``trust_remote_code``, ``attn_implementation``, ...).
    A folder holding a PEFT adapter (``adapter_config.json``) is loaded on its base model and merged
    (needs ``peft``). An already loaded model stays where it is unless ``device``/``dtype`` are given
    (then it is moved in place); of ``model_kwargs`` only ``attn_implementation`` applies to it.
    ``tokenizer`` defaults to the model's own (for an adapter: the adapter folder's if it has one, else
    the base model's; for a Hub id, at the model's ``revision``). ``attn_implementation`` picks the
    attention kernel (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``, ``"flex_attention"``, ...);
    absent, transformers chooses.

    What would give wrong numbers without an error is refused instead: a checkpoint whose decoder body
    has missing, unexpected or mis-shaped weights (transformers would initialize them at random), custom
    model code unless ``trust_remote_code`` is set (an error, never a prompt on the terminal),
    ``revision`` with a local folder, and a tokenizer whose EOS, pad or default special tokens (the ids
    TRL and ches put in every sequence) have no row in the model's embeddings (:func:`check_vocabulary`;
    a tokenizer merely longer than the embeddings is fine, the ids of the data are checked as they are
    tokenized).
    ``dtype`` in the result is the one the weights are in after loading.

    Raises:
        ChesError: the model or tokenizer cannot be found or loaded, or they do not fit (see above).
    """
    model_kwargs = dict(model_kwargs or {})
    trust_remote_code = bool(model_kwargs.pop("trust_remote_code", False))
    attn_implementation = model_kwargs.get("attn_implementation")
    revision = model_kwargs.get("revision")
    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        local = os.path.isdir(os.path.expanduser(name))
        check_folder_exists(name, "model")
        if local and not any(os.path.isfile(os.path.join(os.path.expanduser(name), file))
                             for file in ("config.json", "adapter_config.json")):
            raise ChesError(f"model folder {name} has no config.json (nor adapter_config.json): it is not a Hugging Face "
                            "model folder; save the model there with model.save_pretrained(folder).")
        if revision is not None and local:
            raise ChesError(f"revision={revision!r} selects a version of a Hub model, but {name} is a local folder, "
                            "which has no revisions; drop revision (--revision), or pass the Hub id.")
        resolved_device = resolve_device(device)
        options = {"dtype": resolve_dtype(dtype, resolved_device), "trust_remote_code": trust_remote_code,
                   **{key: value for key, value in model_kwargs.items() if value is not None}}
        loaded, tokenizer_source = _from_pretrained(name, options)
        if model_kwargs.get("device_map") is None:
            loaded.to(resolved_device)
        else:
            resolved_device = loaded.get_input_embeddings().weight.device
            resolved_device = torch.device("cpu") if resolved_device.type == "meta" else resolved_device
    elif isinstance(model, torch.nn.Module):
        idle = sorted(key for key, value in model_kwargs.items() if key != "attn_implementation" and value is not None)
        if idle:
            raise ChesError(f"{', '.join(idle)} only apply when the model is loaded by name; got a loaded "
                            f"{type(model).__name__}: pass its folder or Hub id instead, or drop them.")
        loaded, revision = model, None
        name = tokenizer_source = getattr(model, "name_or_path", "") or type(model).__name__
        first = next(model.parameters())
        resolved_device = resolve_device(device) if device is not None else first.device
        if dtype is not None:
            loaded.to(device=resolved_device, dtype=resolve_dtype(dtype, resolved_device))
        elif device is not None:
            loaded.to(resolved_device)
        if attn_implementation is not None:
            _set_attention(loaded, attn_implementation)
    else:
        raise ChesError(f"model must be a path, a Hub id or a loaded PreTrainedModel; got {type(model).__name__}.")
    loaded.eval()
    body = decoder_body(loaded)
    config = text_config(loaded)
    loaded_tokenizer = load_tokenizer(tokenizer, tokenizer_source, trust_remote_code,
                                      revision=revision if tokenizer is None else None)
    check_vocabulary(loaded_tokenizer, loaded)
    return LoadedModel(
        model=loaded,
        body=body,
        tokenizer=loaded_tokenizer,
        device=resolved_device,
        dtype=weights_dtype(loaded),
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        name=name,
        embedding_rows=embedding_rows(loaded),
    )


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in a tokenizer that decides the token ids of a pair: its vocabulary and rules
    (the fast tokenizer's whole definition), its chat template and special tokens.

    >>> from transformers import AutoTokenizer
    >>> len(tokenizer_fingerprint(AutoTokenizer.from_pretrained("examples/tiny-hh-model")))
    32
    """
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps({"chat_template": getattr(tokenizer, "chat_template", None),
                        "special": {name: str(getattr(tokenizer, name, None)) for name in
                                    ("bos_token", "eos_token", "pad_token", "unk_token")}}, sort_keys=True, default=str)
    return hashlib.sha256((definition + "\0" + extra).encode()).hexdigest()[:32]


def weights_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a model computes in: that of its input embeddings (else of its first floating weight).

    >>> weights_dtype(torch.nn.Linear(2, 2).to(torch.bfloat16))
    torch.bfloat16
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    if weight is not None and weight.is_floating_point():
        return weight.dtype
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def embedding_rows(model: torch.nn.Module) -> int | None:
    """How many token ids ``model`` has an input embedding for (ids ``0..rows - 1``), if it says.

    >>> embedding_rows(torch.nn.Linear(2, 2)) is None
    True
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    shape = getattr(getattr(embeddings, "weight", None), "shape", None)
    return int(shape[0]) if shape is not None and len(shape) == 2 else None


def inserted_ids(tokenizer) -> dict[int, str]:
    """The ids that reach the model in every sequence whatever the data says, each with what puts it there:
    the EOS token (TRL appends its string to every standard completion), the pad token (ches' batches and
    TRL's collator fill rows with it) and the special tokens the tokenizer adds to any text by default
    (e.g. a BOS; a BOS it does not add is not among them). Ids a chat template writes come from the
    template's text and are checked with the data's ids (:func:`ches.data.tokens.check_ids`).

    >>> from transformers import AutoTokenizer
    >>> inserted_ids(AutoTokenizer.from_pretrained("examples/tiny-hh-model"))
    {2: 'EOS token', 0: 'pad token', 1: 'BOS token'}
    """
    try:
        added = [int(value) for value in tokenizer("")["input_ids"]]
    except Exception:  # a tokenizer that cannot encode an empty text adds nothing ches could check here
        added = []
    bos = getattr(tokenizer, "bos_token_id", None)
    found = [(getattr(tokenizer, "eos_token_id", None), "EOS token"), (getattr(tokenizer, "pad_token_id", None), "pad token"),
             *((value, "BOS token" if value == bos else "special token added to every text") for value in added)]
    ids: dict[int, str] = {}
    for value, what in found:
        if isinstance(value, int):
            ids.setdefault(value, what)
    return ids


def check_vocabulary(tokenizer, model: torch.nn.Module) -> None:
    """Refuse a tokenizer whose :func:`inserted_ids` have no embedding in ``model`` (otherwise an
    ``IndexError`` deep in a forward pass, in ches and in TRL alike). A tokenizer with more tokens than
    the model has embeddings passes (transformers 5 itself saves some tokenizers one token longer); the
    ids of the data are checked when they are tokenized (:func:`ches.data.tokens.check_ids`).

    Raises:
        ChesError: one line naming the token, its id and the model's embedding rows.
    """
    rows = embedding_rows(model)
    if rows is None:
        return
    for token_id, what in inserted_ids(tokenizer).items():
        if token_id >= rows:
            token = token_text(tokenizer, token_id)
            raise ChesError(
                f"the tokenizer's {what} {token!r} has id {token_id}, but the model has embeddings for ids 0..{rows - 1} "
                f"only, and that token is in every sequence TRL trains on: the tokenizer does not belong to this model, "
                "or the token was added to it without model.resize_token_embeddings(len(tokenizer)); pass the "
                "model's own tokenizer.")


def default_batch_tokens(loaded: LoadedModel) -> int:
    """Token slots per batch: 1,024 on CPU; on CUDA, what half of the free memory holds by the estimate
    ``bytes per token = dtype size x (6 x hidden + 3 x intermediate) + 8 x hidden`` (the widest live
    activations of one decoder layer, plus the float32 copies of the summed positions), between 4,096
    and 131,072, rounded down to a multiple of 64. An out-of-memory error halves it and retries.
    """
    if loaded.device.type != "cuda":
        return CPU_BATCH_TOKENS
    intermediate = getattr(text_config(loaded.model), "intermediate_size", None) or 4 * loaded.hidden_size
    per_token = torch.finfo(loaded.dtype).bits // 8 * (6 * loaded.hidden_size + 3 * intermediate) + 8 * loaded.hidden_size
    free, _ = torch.cuda.mem_get_info(loaded.device)
    return int(min(max(free // 2 // per_token, 4096), 131072)) // CUDA_PAD_MULTIPLE * CUDA_PAD_MULTIPLE


def _set_attention(model: torch.nn.Module, attn_implementation: str) -> None:
    """Switch a loaded model's attention kernel, or say why it cannot be switched."""
    try:
        model.set_attn_implementation(attn_implementation)
    except (AttributeError, ImportError, ValueError) as error:
        raise ChesError(f"cannot use attn_implementation={attn_implementation!r} with this model: {error}") from None
    if attention_kernel(model) != attn_implementation:
        raise ChesError(f"{type(model).__name__} kept attention {attention_kernel(model)!r}; it cannot switch to "
                        f"{attn_implementation!r} after loading: load it by name with attn_implementation= instead.")


def describe_model(loaded: LoadedModel) -> dict[str, str | None]:
    """What a run's metadata records of the model it ran (the model fields of :class:`~ches.run.runs.ModelRun`)."""
    return {"model": loaded.name, "model_revision": getattr(loaded.model.config, "_commit_hash", None),
            "tokenizer": getattr(loaded.tokenizer, "name_or_path", "") or type(loaded.tokenizer).__name__,
            "dtype": str(loaded.dtype).removeprefix("torch."), "device": str(loaded.device),
            "attention": attention_kernel(loaded.model)}


def attention_kernel(model: torch.nn.Module) -> str | None:
    """The attention implementation a loaded model runs (``"sdpa"``, ``"eager"``, ...), if it says."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def _from_pretrained(name: str, options: dict):
    """``(model, where its tokenizer is)``; PEFT adapter folders are merged into their base model."""
    from transformers import AutoModelForCausalLM

    folder = os.path.expanduser(name)
    adapter = os.path.isfile(os.path.join(folder, "adapter_config.json"))
    with offline_unless_reachable(name) as reason:
        try:
            if not adapter:
                with _quiet_transformers():  # its load report is replaced by check_loaded_weights
                    loaded, report = AutoModelForCausalLM.from_pretrained(name, output_loading_info=True,
                                                                          ignore_mismatched_sizes=True, **options)
                check_loaded_weights(loaded, report, name)
                return loaded, name
            try:
                from peft import AutoPeftModelForCausalLM
            except ImportError:
                raise ChesError(f"{name} is a PEFT adapter; install peft to score with it (pip install peft).") from None
            merged = AutoPeftModelForCausalLM.from_pretrained(name, **options).merge_and_unload()
            has_tokenizer = any(os.path.isfile(os.path.join(name, f)) for f in ("tokenizer.json", "tokenizer_config.json"))
            base = merged.config.name_or_path or getattr(merged, "name_or_path", name)
            return merged, name if has_tokenizer else base
        except ChesError:
            raise
        except Exception as error:  # OS, JSON, safetensors, an attention kernel that is not installed, ...
            if reason:
                raise ChesError(f"could not load model {name!r}: it is not a local folder, {reason}, and it is not "
                                "in the local Hugging Face cache.") from None
            if "trust_remote_code" in str(error):
                raise ChesError(_custom_code_message(name)) from None
            raise ChesError(f"could not load model {name!r} ({type(error).__name__}: {one_line(error)}); check that it is "
                            "a causal LM folder or Hub id with readable config and weights.") from None


def check_loaded_weights(model: torch.nn.Module, report: dict, name: str) -> None:
    """Refuse a checkpoint that does not fill the decoder body, from transformers' loading report:
    missing or mis-shaped weights would be initialized at random (other scores on every run), unexpected
    ones (e.g. more layers than the config has) mean the config is not the checkpoint's. Keys outside the
    body (an untied LM head, a value head) leave the scores unchanged, so they are only logged.

    >>> import transformers
    >>> tiny = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=8, intermediate_size=8,
    ...     num_hidden_layers=1, num_attention_heads=2, vocab_size=16))
    >>> check_loaded_weights(tiny, {"missing_keys": {"model.layers.0.mlp.up_proj.weight"}}, "ckpt")
    Traceback (most recent call last):
    ...
    ches.errors.ChesError: model 'ckpt': the checkpoint does not match the model's body (missing: model.layers.0.mlp.up_proj.weight); ...
    """
    prefix = f"{getattr(model, 'base_model_prefix', '') or 'model'}."
    mismatched = [f"{item[0]} (checkpoint {tuple(item[1])}, model {tuple(item[2])})" if isinstance(item, tuple)
                  else str(item) for item in report.get("mismatched_keys") or ()]
    problems = {"missing": sorted(key for key in report.get("missing_keys") or () if key.startswith(prefix)),
                "unexpected": sorted(key for key in report.get("unexpected_keys") or () if key.startswith(prefix)),
                "mis-shaped": sorted(mismatched)}
    found = [f"{kind}: {_some(keys)}" for kind, keys in problems.items() if keys]
    if report.get("error_msgs"):
        found.append(f"errors: {one_line('; '.join(map(str, report['error_msgs'])), 200)}")
    if found:
        raise ChesError(f"model {name!r}: the checkpoint does not match the model's body ({'; '.join(found)}); "
                        "transformers would initialize missing weights at random and ignore unexpected ones, so the "
                        "scores would be meaningless. Check that the checkpoint is complete and config.json is its own.")
    others = sorted(key for key in set(report.get("missing_keys") or ()) | set(report.get("unexpected_keys") or ())
                    if not key.startswith(prefix))
    if others:
        logging.getLogger("ches").warning("model %r: weights outside the decoder body are missing or unexpected (%s); "
                                          "ches' scores do not use them", name, _some(others))


def _some(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _custom_code_message(name: str) -> str:
    return (f"{name!r} needs custom code of its own to load; ches runs such code only when asked: pass "
            "--trust-remote-code (Python: trust_remote_code set to True) if you trust it, or use a model that "
            "transformers supports.")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings off inside the block (its load report), its verbosity restored after."""
    import transformers.utils.logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)


def load_tokenizer(tokenizer, model_name: str, trust_remote_code: bool = False, revision: str | None = None):
    """``tokenizer`` itself, or loaded from a path/id (default: the model's own, at ``revision``)."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    from transformers import AutoTokenizer

    source = str(tokenizer) if tokenizer is not None else model_name
    check_folder_exists(source, "tokenizer")
    with offline_unless_reachable(source) as reason:
        try:
            return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                 **({"revision": revision} if revision else {}))
        except Exception as error:  # OS, JSON, a damaged tokenizer.json (KeyError, tokenizers' own errors), ...
            if "trust_remote_code" in str(error):
                raise ChesError(_custom_code_message(source)) from None
            damaged = damaged_tokenizer_file(source)
            if reason and tokenizer is None:  # nothing of the model can be had: say so, as loading the model would
                raise ChesError(f"could not load model {source!r}: it is not a local folder, {reason}, and it is not "
                                "in the local Hugging Face cache.") from None
            if damaged:
                detail = f"{damaged} is damaged: {type(error).__name__}: {one_line(error, 200)}"
            elif reason:
                detail = f"it is not a local folder, {reason}, and it is not in the local cache"
            elif os.path.isdir(os.path.expanduser(source)) and not any(
                    os.path.isfile(os.path.join(os.path.expanduser(source), name)) for name in TOKENIZER_FILES):
                detail = (f"the folder holds none of {', '.join(TOKENIZER_FILES)}: save the tokenizer there with "
                          "tokenizer.save_pretrained(folder), or name the folder that holds it")
            else:
                detail = f"{type(error).__name__}: {one_line(error, 300)}"
            whose = "the tokenizer of the model" if tokenizer is None else "a tokenizer from"
            raise ChesError(f"could not load {whose} {source!r} ({detail}); pass tokenizer= (--tokenizer) "
                            "explicitly.") from None


#: the files a tokenizer folder holds at least one of (fast, SentencePiece, BPE vocabulary, configuration)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def damaged_tokenizer_file(folder: str) -> str | None:
    """The file of a local tokenizer ``folder`` that cannot be read, when one can be named."""
    folder = os.path.expanduser(folder)
    if not os.path.isdir(folder):
        return None
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            json.loads(text)
            if file == "tokenizer.json":
                from tokenizers import Tokenizer

                Tokenizer.from_str(text)
                if not {"model", "added_tokens"} <= set(json.loads(text)):  # both read by transformers
                    return path
        except Exception:  # JSON, UTF-8, or the tokenizers library refusing the content
            return path
    return None


def max_positions(model: torch.nn.Module) -> int | None:
    """The model's context length from its config (``max_position_embeddings``), if it states one."""
    value = getattr(text_config(model), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None
