"""Chat templates a recipe can name with `chat_template:`, and the check of that field.

`auto` picks the template most of the input models carry; a name picks one of the common
formats below; anything else must be a Jinja template (it contains `{`). The chosen template is
written to the output as `chat_template.jinja`, the file transformers reads first.
"""

from __future__ import annotations

AUTO = "auto"

TEMPLATES = {
    # ChatML: <|im_start|>role\ncontent<|im_end|>
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # Llama 3: header tokens around the role, <|eot_id|> after each turn
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    # Alpaca: ### Instruction / ### Response sections; a system message leads as plain text
    "alpaca": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    # Mistral: [INST] user [/INST] answer</s>; a system message is prefixed to the first user turn
    "mistral": (
        "{{ bos_token }}"
        "{% set ns = namespace(system='') %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\\n\\n' %}"
        "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
        "{% set ns.system = '' %}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
        "{% endif %}"
        "{% endfor %}"
    ),
}


def template_problem(value: object) -> str | None:
    """Why a `chat_template` value is not usable, or None."""
    if not isinstance(value, str) or not value.strip():
        return f"expected auto, a template name ({', '.join(TEMPLATES)}) or a Jinja template, got {value!r}"
    if value == AUTO or value in TEMPLATES or "{" in value:
        return None
    return f"unknown template {value!r}; use auto, {', '.join(TEMPLATES)} or a Jinja template"


def resolve(value: str, model_templates: list[str]) -> str | None:
    """The template text for a recipe value; for auto, the most common of `model_templates`
    (the first model's among equals), or None when no model has one."""
    if value == AUTO:
        if not model_templates:
            return None
        counts = {t: model_templates.count(t) for t in model_templates}
        return max(counts, key=lambda t: counts[t])
    return TEMPLATES.get(value, value)
