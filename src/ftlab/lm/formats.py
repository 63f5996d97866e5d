"""The three data formats of language-model fine-tuning, tokenized with their loss masks.

As TRL names them: plain **text** (language modelling), **prompt–completion** pairs, and
**conversations** (role/content messages, rendered with the tokenizer's chat template). Each
example becomes ``input_ids`` and ``labels`` of the same length; a label of ``-100`` is a token
the loss skips. ``loss_on`` says which tokens count:

- ``all``: every token;
- ``completion``: a pair's completion, or a conversation's assistant turns;
- ``assistant``: the same rule by the conversational name (the two are synonyms);
- ``auto`` (the default): ``all`` for text, the answer's tokens otherwise.

Chat templates are rendered by transformers' ``apply_chat_template``, which runs Jinja in its
sandboxed environment (``ImmutableSandboxedEnvironment``): a template from a model folder can
format text, not call code. Assistant tokens are found by rendering each prefix of the
conversation (as TRL does for templates without ``{% generation %}``) and are checked to be a
token prefix of the whole; a template for which that fails is refused in one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ftlab.errors import FtlabError

IGNORE = -100  # torch's cross_entropy ignore_index
LOSS_ON = ("auto", "completion", "assistant", "all")
FORMATS = ("text", "prompt_completion", "conversation")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Tokenized:
    """One example: ``labels[i]`` is ``input_ids[i]`` or :data:`IGNORE`."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


def check_loss_on(value: Any) -> str:
    if value not in LOSS_ON:
        raise FtlabError(f"task.loss_on={value!r} must be one of {', '.join(LOSS_ON)}")
    return str(value)


def format_of(example: Mapping[str, Any]) -> str:
    """Which format an example is in, by its keys (``text`` | ``prompt``+``completion`` |
    ``messages``)."""
    if "messages" in example:
        return "conversation"
    if "prompt" in example and "completion" in example:
        return "prompt_completion"
    if "text" in example:
        return "text"
    raise FtlabError(
        f"an example with keys {sorted(example)} is in no format: give text, prompt+completion "
        "or messages (a list of {role, content})"
    )


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer: Any, messages: Sequence[Mapping[str, str]], prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=prompt
    )
    return _ids(tokenizer, text)


def _trim(ids: list[int], labels: list[int], max_length: int) -> Tokenized:
    """Cut from the right: an over-long example keeps its beginning."""
    return Tokenized(tuple(ids[:max_length]), tuple(labels[:max_length]))


def encode_text(tokenizer: Any, text: str, max_length: int, loss_on: str = "auto") -> Tokenized:
    """Plain text: every token a target (there is no answer part to single out)."""
    if loss_on not in ("auto", "all"):
        raise FtlabError(
            f"task.loss_on={loss_on}: plain text has no completion or assistant part; use all"
        )
    ids = [*_ids(tokenizer, text), tokenizer.eos_token_id]
    return _trim(ids, list(ids), max_length)


def encode_pair(
    tokenizer: Any,
    prompt: str,
    completion: str,
    max_length: int,
    loss_on: str = "auto",
    chat: bool = False,
) -> Tokenized:
    """Prompt then completion then end-of-sequence; ``chat`` renders them as a user turn and
    an assistant turn of the chat template instead. The completion's tokens (and the closing
    end token: the model learns to stop) are the targets unless ``loss_on=all``."""
    if chat:
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
        return encode_conversation(tokenizer, messages, max_length, loss_on)
    head = _ids(tokenizer, prompt)
    tail = [*_ids(tokenizer, completion), tokenizer.eos_token_id]
    masked = loss_on != "all"
    labels = [IGNORE] * len(head) if masked else list(head)
    return _trim(head + tail, labels + tail, max_length)


def prompt_ids(tokenizer: Any, example: Mapping[str, Any], chat: bool) -> list[int]:
    """The tokens a model generates from: the prompt, or the conversation up to its last
    assistant turn with the template's generation prompt."""
    kind = format_of(example)
    if kind == "prompt_completion":
        if chat:
            return _render(tokenizer, [{"role": "user", "content": example["prompt"]}], True)
        return _ids(tokenizer, example["prompt"])
    if kind == "conversation":
        messages = list(example["messages"])
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return _render(tokenizer, messages[:last], True)
    raise FtlabError("plain text has no prompt to generate from")


def reference(example: Mapping[str, Any]) -> str:
    """The answer a generation is scored against."""
    if format_of(example) == "prompt_completion":
        return str(example["completion"])
    messages = list(example["messages"])
    return str([m for m in messages if m["role"] == "assistant"][-1]["content"])


def check_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, Sequence) or not messages:
        raise FtlabError("messages must be a non-empty list of {role, content}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ROLES or "content" not in m:
            raise FtlabError(
                f"messages[{i}] must be {{role: {'|'.join(ROLES)}, content: text}}, got {m!r}"
            )
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    if not any(m["role"] == "assistant" for m in out):
        raise FtlabError("a conversation needs at least one assistant message")
    return out


def encode_conversation(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], max_length: int, loss_on: str = "auto"
) -> Tokenized:
    """A conversation through the tokenizer's chat template; the assistant turns' tokens (the
    template's own end-of-turn token included) are the targets unless ``loss_on=all``."""
    if not getattr(tokenizer, "chat_template", None):
        raise FtlabError(
            "conversations need a tokenizer with a chat template; this model's has none "
            "(use prompt-completion data, or a chat model)"
        )
    messages = check_messages(messages)
    ids = _render(tokenizer, messages, prompt=False)
    if loss_on == "all":
        return _trim(ids, list(ids), max_length)
    labels = [IGNORE] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _render(tokenizer, messages[:i], prompt=True)
        end = _render(tokenizer, messages[: i + 1], prompt=False)
        if ids[: len(start)] != start or ids[: len(end)] != end:
            raise FtlabError(
                "the chat template renders a conversation's prefix differently from the whole, "
                "so its assistant tokens cannot be found: use task.loss_on=all"
            )
        labels[len(start) : len(end)] = ids[len(start) : len(end)]
    return _trim(ids, labels, max_length)


def encode(
    tokenizer: Any, example: Mapping[str, Any], max_length: int, loss_on: str, chat: bool
) -> Tokenized:
    """Any example, by its format."""
    kind = format_of(example)
    if kind == "text":
        return encode_text(tokenizer, str(example["text"]), max_length, loss_on)
    if kind == "prompt_completion":
        return encode_pair(
            tokenizer, str(example["prompt"]), str(example["completion"]), max_length, loss_on, chat
        )
    return encode_conversation(tokenizer, example["messages"], max_length, loss_on)
