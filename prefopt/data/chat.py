"""Conversational rows: render ``{role, content}`` messages with the tokenizer's chat template.

The prompt is rendered with ``add_generation_prompt=True``; the response is whatever the full
conversation renders to *after* that prompt text (the assistant turn, including the template's
end-of-turn marker). Only those response tokens carry loss, so system/user turns, earlier
assistant turns and the generation prompt never do.

Rendered text is tokenized without special tokens everywhere (``encode_text``): a template that
writes ``{{ bos_token }}`` itself yields exactly one BOS, never a second one from the tokenizer.
"""
from __future__ import annotations

from pathlib import Path

from prefopt.errors import ConfigError, DataError

# A minimal template for tokenizers that have none (the lab's); the assistant turn ends with eos.
SIMPLE_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "assistant: {{ message['content'] }}{{ eos_token }}"
    "{%- else -%}"
    "{{ message['role'] + ': ' + message['content'] + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}assistant:{%- endif -%}"
)
CHAT_TEMPLATES = {"simple": SIMPLE_CHAT_TEMPLATE}


def set_chat_template(tokenizer, template: str | None) -> None:
    """Install ``template`` on ``tokenizer``: a built-in name ('simple'), a file path, or Jinja text."""
    if not template:
        return
    if template in CHAT_TEMPLATES:
        tokenizer.chat_template = CHAT_TEMPLATES[template]
    elif "{{" in template or "{%" in template:
        tokenizer.chat_template = template
    elif Path(template).expanduser().is_file():
        tokenizer.chat_template = Path(template).expanduser().read_text(encoding="utf-8")
    else:
        raise ConfigError(f"data.chat_template: '{template}' is neither a built-in template "
                          f"({', '.join(CHAT_TEMPLATES)}), a file, nor Jinja text")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: list[dict]) -> str:
    """The prompt conversation followed by the template's generation prompt."""
    if not has_chat_template(tokenizer):
        raise DataError("conversational data needs a tokenizer with a chat template; this tokenizer has "
                        "none (set data.chat_template to 'simple', a Jinja file or Jinja text)")
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def render_pair(tokenizer, prompt: list[dict], response: list[dict]) -> tuple[str, str]:
    """(prompt text, response text) such that prompt text + response text is the full rendering."""
    prompt_text = render_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    if not full.startswith(prompt_text):
        raise DataError("the chat template renders the conversation so that the prompt with its generation "
                        "prompt is not a prefix of the full conversation; the assistant response cannot be "
                        "isolated (use a template without that behaviour, e.g. data.chat_template: simple)")
    return prompt_text, full[len(prompt_text):]


def prompt_text(tokenizer, prompt: str | list[dict]) -> str:
    """The text a policy continues: a string as it is, a conversation rendered by ``render_prompt``."""
    return render_prompt(tokenizer, prompt) if isinstance(prompt, list) else prompt


def last_user_content(messages: list[dict]) -> str:
    """The content of a conversation's last user turn (what a single-turn task was asked)."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return m["content"]
    roles = ", ".join(str(m.get("role")) for m in messages) or "none"
    raise DataError(f"a conversational prompt has no user turn (roles: {roles})")
