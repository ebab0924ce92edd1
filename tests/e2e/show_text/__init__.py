"""Test-only output node for the browser tests: shows a STRING input (a link, never a widget) in the prompt's
history (`/history` -> outputs[node id].text), so a scenario can check what a LoRA Stack's `trigger_words` output
carried. Loaded only by tests/e2e."""


class E2EShowText:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})}}

    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "tests/lora_state"

    def show(self, text):
        return {"ui": {"text": [text]}}


NODE_CLASS_MAPPINGS = {"E2EShowText": E2EShowText}
NODE_DISPLAY_NAME_MAPPINGS = {"E2EShowText": "Show Text (e2e test)"}
