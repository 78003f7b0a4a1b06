"""Tokenizer, generation defaults and chat template of a model directory.

``tokenizer.json`` is loaded with the ``tokenizers`` library; ``generation_config.json`` gives the
EOS ids and sampling defaults; the chat template comes from ``tokenizer_config.json`` (or the
``chat_template.jinja`` file transformers writes next to it) and is rendered with jinja2's sandbox.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from aivmm.errors import InputError, ModelLoadError, missing_extra

DEFAULT_MAX_NEW_TOKENS = 256


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: unreadable JSON ({exc})") from exc
    return data if isinstance(data, dict) else {}


@dataclasses.dataclass(frozen=True)
class GenerationDefaults:
    """What generation_config.json says (greedy unless it sets do_sample)."""

    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    pad_token_id: int | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    @classmethod
    def load(cls, folder: pathlib.Path) -> GenerationDefaults:
        gen = _read_json(folder / "generation_config.json")
        cfg = _read_json(folder / "config.json")
        eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]) if isinstance(e, int))

        def num(key: str, default: Any) -> Any:
            v = gen.get(key)
            return default if v is None else v

        return cls(
            eos_token_ids=eos_ids,
            bos_token_id=num("bos_token_id", cfg.get("bos_token_id")),
            pad_token_id=num("pad_token_id", cfg.get("pad_token_id")),
            max_new_tokens=int(num("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            do_sample=bool(num("do_sample", False)),
            temperature=float(num("temperature", 1.0)),
            top_p=float(num("top_p", 1.0)),
            top_k=int(num("top_k", 0)),  # HF's default top_k=50 applies only with do_sample; 0 = off
            repetition_penalty=float(num("repetition_penalty", 1.0)),
        )


class TextCodec:
    """Text ↔ token ids through ``tokenizers``, plus the chat template."""

    def __init__(self, folder: pathlib.Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise missing_extra("tokenizers", "llm") from exc
        path = folder / "tokenizer.json"
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelLoadError(f"{path}: not a tokenizers tokenizer.json ({exc})") from exc
        cfg = _read_json(folder / "tokenizer_config.json")
        self.config = cfg
        template = cfg.get("chat_template")
        jinja_file = folder / "chat_template.jinja"
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text()
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        self.chat_template: str | None = template if isinstance(template, str) else None
        self._compiled: Any = None
        self.add_bos = bool(cfg.get("add_bos_token", False))
        self.bos_token = _token_str(cfg.get("bos_token"))
        self.eos_token = _token_str(cfg.get("eos_token"))
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def tokenizer(self) -> Any:
        return self._tok

    def encode(self, text: str) -> list[int]:
        # add_special_tokens=False: the template or caller adds BOS; add_bos_token adds it here
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if self.add_bos and self.bos_token is not None:
            bos = self._tok.token_to_id(self.bos_token)
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos, *ids]
        return list(ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=True))

    def decode_stream(self) -> Any:
        from tokenizers.decoders import DecodeStream

        return DecodeStream(skip_special_tokens=True)

    def chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
        if self.chat_template is None:
            raise InputError("this model has no chat template (tokenizer_config.json has no chat_template)")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m:
                raise InputError(f"message {i} must be a mapping with 'role' and 'content', got {m!r}")
        if self._compiled is None:
            try:
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError as exc:
                raise missing_extra("jinja2", "llm") from exc

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

            def raise_exception(message: str) -> None:
                raise InputError(f"chat template refused the messages: {message}")

            env.globals["raise_exception"] = raise_exception
            self._compiled = env.from_string(self.chat_template)
        return str(
            self._compiled.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        )


def _token_str(tok: Any) -> str | None:
    if isinstance(tok, str):
        return tok
    if isinstance(tok, Mapping) and isinstance(tok.get("content"), str):
        return str(tok["content"])
    return None
