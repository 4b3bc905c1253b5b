"""The ChatML chat template of the embedded tokenizer, with assistant-mask markers."""

from __future__ import annotations

# Qwen3's ChatML layout, with two deliberate differences:
# - assistant content is rendered verbatim in every turn (stock Qwen3 strips the reasoning of
#   earlier turns, which would make training text differ from what the model produced);
# - each assistant turn's content and its closing <|im_end|> sit inside {% generation %}, so
#   `return_assistant_tokens_mask=True` marks exactly the tokens the loss is taken on. The
#   header `<|im_start|>assistant\n` and the newline after <|im_end|> stay unmasked.
#   One edge: content that itself starts with a newline shares a BPE token with the header's
#   newline (the pre-tokenizer keeps a newline run whole), so that one token is masked too.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is not string -%}"
    "{{- raise_exception('message ' ~ loop.index0 ~ ' (' ~ message['role'] ~ '): content must be"
    " a string') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- generation -%}"
    "{{- message['content'] + '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)
