"""The same three nodes for ComfyUI's V3 node API (`comfy_entrypoint`), derived from the V1 classes.

The V1 classes in nodes.py stay the one definition (inputs, tooltips, behaviour); this module translates their
INPUT_TYPES/RETURN_TYPES into `io.Schema` and their functions into `execute`, so both APIs cannot drift apart.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

_SOCKETS = {"MODEL": io.Model, "CLIP": io.Clip, "STRING": io.String, "LORA_STACK": io.Custom("LORA_STACK")}


def _input(name: str, spec: tuple, optional: bool):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    common = {"optional": optional, "tooltip": options.get("tooltip")}
    if isinstance(kind, list):
        return io.Combo.Input(name, options=kind, default=options.get("default"), **common)
    if kind == "FLOAT":
        return io.Float.Input(name, default=options.get("default"), min=options.get("min"), max=options.get("max"),
                              step=options.get("step"), **common)
    if kind == "STRING":
        return io.String.Input(name, default=options.get("default"), multiline=options.get("multiline", False),
                               **common)
    if kind == "BOOLEAN":
        return io.Boolean.Input(name, default=options.get("default"), **common)
    return _SOCKETS[kind].Input(name, **common)


def _v3_node(node_id: str, v1):
    def define_schema(cls):
        types = v1.INPUT_TYPES()
        inputs = [_input(name, spec, optional)
                  for optional, group in ((False, types.get("required", {})), (True, types.get("optional", {})))
                  for name, spec in group.items()]
        outputs = [_SOCKETS[kind].Output(display_name=name, tooltip=tooltip)
                   for kind, name, tooltip in zip(v1.RETURN_TYPES, v1.RETURN_NAMES, v1.OUTPUT_TOOLTIPS)]
        return io.Schema(node_id=node_id, display_name=NODE_DISPLAY_NAME_MAPPINGS[node_id], category=v1.CATEGORY,
                         description=v1.DESCRIPTION, inputs=inputs, outputs=outputs)

    def execute(cls, **kwargs):
        result = getattr(v1(), v1.FUNCTION)(**kwargs)
        if isinstance(result, dict):      # V1's {"ui": ..., "result": ...}
            return io.NodeOutput(*result["result"], ui=result.get("ui"))
        return io.NodeOutput(*result)

    members = {"define_schema": classmethod(define_schema), "execute": classmethod(execute)}
    if hasattr(v1, "VALIDATE_INPUTS"):
        members["validate_inputs"] = classmethod(lambda cls, **kwargs: v1.VALIDATE_INPUTS(**kwargs))
    if hasattr(v1, "IS_CHANGED"):
        members["fingerprint_inputs"] = classmethod(lambda cls, **kwargs: v1.IS_CHANGED(**kwargs))
    return type(node_id, (io.ComfyNode,), members)


V3_NODES = [_v3_node(node_id, v1) for node_id, v1 in NODE_CLASS_MAPPINGS.items()]


class LoraStateExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(V3_NODES)


async def comfy_entrypoint() -> ComfyExtension:
    return LoraStateExtension()
