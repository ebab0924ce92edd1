"""Test-only stand-in for Comfyroll Studio's "CR LoRA Stack" (Suzie1/ComfyUI_Comfyroll_CustomNodes), so that
example_workflows/lora_state_interop.json can run in the browser tests without installing that pack.

Same inputs, widget order and outputs as the original: three (switch, lora_name, model_weight, clip_weight)
groups and an optional incoming lora_stack; outputs (LORA_STACK, show_help). Loaded only by tests/e2e.
"""
import folder_paths


class CRLoRAStackStandIn:
    @classmethod
    def INPUT_TYPES(cls):
        loras = ["None"] + folder_paths.get_filename_list("loras")
        required = {}
        for i in (1, 2, 3):
            required[f"switch_{i}"] = (["Off", "On"],)
            required[f"lora_name_{i}"] = (loras,)
            required[f"model_weight_{i}"] = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})
            required[f"clip_weight_{i}"] = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})
        return {"required": required, "optional": {"lora_stack": ("LORA_STACK",)}}

    RETURN_TYPES = ("LORA_STACK", "STRING")
    RETURN_NAMES = ("LORA_STACK", "show_help")
    FUNCTION = "lora_stacker"
    CATEGORY = "tests/lora_state"

    def lora_stacker(self, lora_stack=None, **kw):
        stack = list(lora_stack or [])
        for i in (1, 2, 3):
            name = kw[f"lora_name_{i}"]
            if kw[f"switch_{i}"] == "On" and name != "None":
                stack.append((name, kw[f"model_weight_{i}"], kw[f"clip_weight_{i}"]))
        return (stack, "test stand-in for Comfyroll's CR LoRA Stack")


NODE_CLASS_MAPPINGS = {"CR LoRA Stack": CRLoRAStackStandIn}
NODE_DISPLAY_NAME_MAPPINGS = {"CR LoRA Stack": "CR LoRA Stack (test stand-in)"}
