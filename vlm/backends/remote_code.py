"""Load ``trust_remote_code`` causal-LM models (moondream2 among them) correctly under transformers 5.

Transformers 5 builds every model on the meta device and then fills in the checkpoint. Remote code
written for transformers 4 breaks in two ways there (moondream2's ``HfMoondream`` does both; see
m87-labs/moondream-station PR #39, which pinned ``transformers<5`` for it, and pipecat-ai/pipecat
PR #5856, which worked around it):

1. Its constructor never calls ``self.post_init()``. Transformers 5 sets ``all_tied_weights_keys``
   and other loading metadata there, so ``from_pretrained`` fails with ``AttributeError: ...
   object has no attribute 'all_tied_weights_keys'``.
2. It computes non-persistent buffers in ``__init__`` (moondream2: the attention mask and the
   rotary table ``freqs_cis``). On the meta device they get no values, no checkpoint holds them,
   and ``_move_missing_keys_from_meta_to_device`` then swaps every non-persistent buffer for a
   ``torch.empty_like`` (huggingface/transformers issue #48892). Only the model's own
   ``_init_weights`` could refill them, and old remote code does not: the model loads and
   answers garbage.

``load_remote_code_model`` fixes both without knowing anything about the model:

1. It loads through a throwaway subclass of the remote class whose ``__init__`` calls
   ``post_init()`` if the remote constructor did not.
2. After loading, it builds a second, template instance of the remote class with every parameter
   sent to the meta device as it is registered (no weight memory) and everything else computed
   for real on CPU, which is how transformers 4 built models (accelerate's
   ``init_empty_weights(include_buffers=False)``). The template's non-persistent buffers are what
   the model's own ``__init__`` computes; they are copied into the loaded model.

Why a template rather than recomputing the buffers by hand (pipecat's fix for moondream2): it works
for any model and reproduces the constructor's values exactly. Why not build the loaded model
itself with real buffers and snapshot them: transformers 5 decides from the device context whether
to initialise weights in ``post_init()``; built off meta, the model is marked initialised during
construction, and weights missing from the checkpoint would then never be initialised. The
template is thrown away, so nothing it marks matters.

Remote code may also fetch files from other repositories by name while it is built (moondream2 fetches
its tokenizer with ``tokenizers.Tokenizer.from_pretrained("moondream/starmie-v1")``, from the branch
``main``): ``tokenizer_pins`` fetches those at a fixed commit instead, so that pinning the model pins
everything it reads.

For well-behaved remote code (it calls ``post_init()`` and restores its buffers in
``_init_weights``) both steps are no-ops: ``post_init()`` runs once, and the template's buffers
equal the restored ones. Unlike ``AutoModelForCausalLM``, this does not graft ``GenerationMixin``
onto remote classes that define their own ``generate()``; moondream2 needs no such thing.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import AutoConfig, PreTrainedModel
from transformers.dynamic_module_utils import get_class_from_dynamic_module

log = logging.getLogger(__name__)

_AUTO_CLASS = "AutoModelForCausalLM"
_POST_INIT_CALLED = "_remote_code_post_init_called"


def load_remote_code_model(
    model_id_or_path: str,
    *,
    revision: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    tokenizer_pins: Mapping[str, str] | None = None,
) -> nn.Module:
    """Load the ``AutoModelForCausalLM`` remote class of ``model_id_or_path``, fixed for transformers 5.

    ``revision`` pins the config, the remote code and the weights alike (as
    ``AutoModelForCausalLM.from_pretrained(..., revision=...)`` does). Returns an instance of the
    remote class itself (not of the loading subclass), on ``device``, in eval mode. ``dtype`` goes
    to ``from_pretrained`` as is, so a buffer the model creates with an explicit dtype (say a
    float32 rotary table) keeps it, as with plain transformers. ``tokenizer_pins`` maps a repository the remote
    code loads a ``tokenizers.Tokenizer`` from (at ``main``) to the commit to load instead (``PinnedTokenizer``).

    Raises ``ValueError`` if the config names no remote ``AutoModelForCausalLM`` class.
    """
    config = AutoConfig.from_pretrained(model_id_or_path, revision=revision, trust_remote_code=True)
    class_ref = (getattr(config, "auto_map", None) or {}).get(_AUTO_CLASS)
    if class_ref is None:
        raise ValueError(f"{model_id_or_path!r} has no remote {_AUTO_CLASS} class in its config's auto_map")
    remote_class: type[PreTrainedModel] = get_class_from_dynamic_module(class_ref, model_id_or_path, revision=revision)
    with _tokenizers_pinned(remote_class, tokenizer_pins or {}):
        return _load(remote_class, model_id_or_path, config, revision, dtype, device)


def _load(
    remote_class: type[PreTrainedModel],
    model_id_or_path: str,
    config: Any,
    revision: str | None,
    dtype: torch.dtype,
    device: str | torch.device,
) -> nn.Module:
    """The model, loaded and fixed (see the module's docstring)."""
    template_config = copy.deepcopy(config)  # before loading: a constructor may edit its config
    model = _calling_post_init(remote_class).from_pretrained(
        model_id_or_path, config=config, revision=revision, dtype=dtype
    )
    # The subclass only mattered during construction; hand back the remote class itself, so type
    # checks, pickling and save_pretrained (which copies the remote code) see the real thing.
    model.__class__ = remote_class
    model.__dict__.pop(_POST_INIT_CALLED, None)

    # Refill the non-persistent buffers with what the constructor computes (transformers 5 leaves
    # them as torch.empty_like unless the model's _init_weights restores them).
    for name, value in _constructed_buffers(remote_class, template_config, dtype).items():
        module_name, _, buffer_name = name.rpartition(".")
        module = model.get_submodule(module_name)
        current = module._buffers[buffer_name]
        if current is not None:
            value = value.to(device=current.device, dtype=current.dtype)
        module._buffers[buffer_name] = value
    return model.to(device).eval()


class PinnedTokenizer:
    """``tokenizers.Tokenizer`` as remote code sees it while it loads: a tokenizer fetched from a pinned repository
    at ``main`` comes from the pinned commit. Where that commit cannot be had (offline, with only an older download
    of ``main`` in the cache), ``main`` is used as the code asked, with a warning that says how to get the pinned
    one; where neither can, the error is the pinned commit's, so the download it names is the pinned one."""

    def __init__(self, pins: Mapping[str, str]) -> None:
        self.pins = pins
        self.warned: set[str] = set()  # a model is built twice while it loads (see _constructed_buffers)

    def from_pretrained(self, identifier: str, revision: str = "main", token: str | None = None) -> Tokenizer:
        pinned = self.pins.get(identifier) if revision == "main" else None
        if pinned is None:
            return Tokenizer.from_pretrained(identifier, revision=revision, token=token)
        try:
            return Tokenizer.from_pretrained(identifier, revision=pinned, token=token)
        except Exception as error:
            missing = error
        try:
            unpinned = Tokenizer.from_pretrained(identifier, revision=revision, token=token)
        except Exception:
            unpinned = None
        if unpinned is None:
            raise missing  # outside the handlers: the error's context stays its own
        if identifier in self.warned:
            return unpinned
        self.warned.add(identifier)
        log.warning(
            "the tokenizer %s at commit %s could not be loaded (%s); using its %s branch instead. To load the pinned "
            "one, run `hf download %s tokenizer.json --revision %s` on a machine with internet access",
            identifier,
            pinned,
            type(missing).__name__,
            revision,
            identifier,
            pinned,
        )
        return unpinned

    def __getattr__(self, name: str) -> Any:
        return getattr(Tokenizer, name)


@contextmanager
def _tokenizers_pinned(remote_class: type, pins: Mapping[str, str]) -> Iterator[None]:
    """``PinnedTokenizer`` in place of ``tokenizers.Tokenizer`` in the remote code's modules (the class's and the
    ones beside it, which it imported) while the block runs."""
    package = remote_class.__module__.rpartition(".")[0] + "."
    modules = [module for name, module in list(sys.modules.items()) if name.startswith(package)] if pins else []
    patched = [module for module in modules if getattr(module, "Tokenizer", None) is Tokenizer]
    pinned = PinnedTokenizer(pins)
    for module in patched:
        module.Tokenizer = pinned
    try:
        yield
    finally:
        for module in patched:
            module.Tokenizer = Tokenizer


def _calling_post_init(remote_class: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """A subclass of ``remote_class`` whose constructor calls ``post_init()`` if the remote one did not."""

    def __init__(self: PreTrainedModel, config: Any, *args: Any, **kwargs: Any) -> None:
        remote_class.__init__(self, config, *args, **kwargs)
        if not self.__dict__.get(_POST_INIT_CALLED):
            self.post_init()

    def post_init(self: PreTrainedModel) -> None:
        self.__dict__[_POST_INIT_CALLED] = True
        remote_class.post_init(self)

    # The remote class's names, so transformers' logs and messages read as usual.
    namespace = {
        "__init__": __init__,
        "post_init": post_init,
        "__module__": remote_class.__module__,
        "__qualname__": remote_class.__qualname__,
    }
    return type(remote_class.__name__, (remote_class,), namespace)


def _constructed_buffers(
    remote_class: type[PreTrainedModel], config: Any, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The non-persistent buffers that ``remote_class(config)`` computes, by qualified name, on CPU.

    Built under the default dtype ``from_pretrained(dtype=...)`` builds under, so that buffers made
    without an explicit dtype come out as in the loaded model.
    """
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with _parameters_on_meta(), torch.device("cpu"):
            template = remote_class(config)
    finally:
        torch.set_default_dtype(previous_dtype)
    return {
        (f"{module_name}.{name}" if module_name else name): buffer
        for module_name, module in template.named_modules()
        for name, buffer in module.named_buffers(recurse=False)
        if name in module._non_persistent_buffers_set
    }


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Move every parameter to the meta device as it is registered.

    A parameter is allocated uninitialised, moved at once (its ``reset_parameters`` then runs on
    meta, for free) and its memory released, so a template of a 2B-parameter model costs its
    buffers only. This patches ``nn.Module.register_parameter`` process-wide while it lasts: load
    models from one thread at a time.
    """
    original = nn.Module.register_parameter

    def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = type(param)(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]
