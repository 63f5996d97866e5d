"""Where language-model examples come from, as plain dicts in one of the three formats.

- ``chatterbot``: the chatterbot-corpus package's English YAML (2,026 conversations); each
  conversation alternates user and assistant turns.
- ``bbc_topic``: BBC News as text to topic: the prompt is an article's opening, the
  completion its topic word (business, entertainment, politics, sport, tech), so exact match
  is comparable with the classifier tables' accuracy.
- ``jsonl``: a user's file, one example a line: ``{"text"}``, ``{"prompt", "completion"}`` or
  ``{"messages": [{role, content}, ...]}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ftlab.errors import FtlabError

SOURCES = ("chatterbot", "bbc_topic", "jsonl")
# The BBC folders' names and the topic words the model answers with.
BBC_TOPICS = {
    "business": "business",
    "entertainment": "entertainment",
    "politics": "politics",
    "sport": "sport",
    "sports": "sport",
    "tech": "tech",
}
BBC_PROMPT = (
    "Classify the news article into one topic: business, entertainment, politics, sport or "
    "tech. Answer with the topic only.\n\n{article}\n\nTopic:"
)


def chatterbot_dir() -> Path:
    from ftlab.data.bbc_news import package_dir

    return package_dir("chatterbot_corpus", "chatterbot", "chatterbot-corpus") / "data" / "english"


def chatterbot() -> list[dict[str, Any]]:
    """Every English conversation, user and assistant alternating (the YAML's lists)."""
    out = []
    for path in sorted(chatterbot_dir().glob("*.yml")):
        for turns in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            turns = [str(t) for t in turns if t is not None]
            if len(turns) < 2:
                continue
            roles = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
            out.append(
                {"messages": [{"role": r, "content": t} for r, t in zip(roles, turns, strict=True)]}
            )
    return out


def bbc_topic(max_chars: int = 400) -> list[dict[str, Any]]:
    """Articles (their first ``max_chars`` characters) to topic words, folder by folder."""
    from ftlab.data.bbc_news import bbc_news_dir, read_article

    root = bbc_news_dir()
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        topic = BBC_TOPICS.get(folder.name, folder.name)
        for path in sorted(folder.glob("*.txt")):
            article = " ".join(read_article(path).split())[:max_chars]
            out.append({"prompt": BBC_PROMPT.format(article=article), "completion": f" {topic}"})
    return out


def bbc_text(max_chars: int = 400) -> list[dict[str, Any]]:
    """BBC articles as plain text (a held-out domain for a chat model's forgetting)."""
    return [{"text": e["prompt"].split("\n\n")[1]} for e in bbc_topic(max_chars)]


def chatterbot_text() -> list[dict[str, Any]]:
    """Chatterbot's conversations as plain text (a held-out domain for a news model)."""
    return [{"text": " ".join(m["content"] for m in e["messages"])} for e in chatterbot()]


def jsonl(path: str) -> list[dict[str, Any]]:
    """A user's JSONL file, one example a line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FtlabError(
            f"data.path={path!r}: no such file (give a .jsonl file, one example a line)"
        )
    out = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise FtlabError(f"{file}:{number} is not JSON ({err.msg})") from None
        if not isinstance(item, dict):
            raise FtlabError(
                f"{file}:{number} must be a JSON object (text, prompt+completion or messages)"
            )
        out.append(item)
    if not out:
        raise FtlabError(f"{file} holds no examples")
    return out


def read_source(source: str, path: str | None = None, max_chars: int = 400) -> list[dict[str, Any]]:
    if source == "chatterbot":
        return chatterbot()
    if source == "bbc_topic":
        return bbc_topic(max_chars)
    if source == "jsonl":
        if not path:
            raise FtlabError("data.source=jsonl needs data.path=<file.jsonl>")
        return jsonl(path)
    raise FtlabError(f"data.source={source!r} must be one of {', '.join(SOURCES)}")


def held_out_text(name: str, max_chars: int = 400) -> list[dict[str, Any]]:
    """Text of another domain for forgetting perplexity: ``bbc_news``, ``chatterbot``, or a
    JSONL file of ``{"text"}`` lines."""
    if name == "bbc_news":
        return bbc_text(max_chars)
    if name == "chatterbot":
        return chatterbot_text()
    return [{"text": str(e.get("text", ""))} for e in jsonl(name) if e.get("text")]
