"""Checks of the ComfyUI pack's non-Python files, without ComfyUI.

nodes/nodes.py imports ComfyUI, so it is never imported here: its INPUT_TYPES, RETURN_NAMES, tooltips and mappings
are read from the source with `ast` (a tiny evaluator for the constructs INPUT_TYPES uses).

Covered: locales/en/nodeDefs.json against the node definitions, help pages, example workflows (valid UI-format
JSON, known node types, consistent links, widget values that fit our nodes), requirements.txt, .comfyignore, and
web/lora_state.js (syntax via `node --check` when node is installed; skipped visibly otherwise).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODES_PY = ROOT / "nodes" / "nodes.py"
STACK_ROWS_PY = ROOT / "lora_state" / "stack_rows.py"
WORKFLOWS = ROOT / "example_workflows"
NODEDEFS = ROOT / "locales" / "en" / "nodeDefs.json"
JS = ROOT / "web" / "lora_state.js"

EXPECTED_WORKFLOWS = ("lora_state_basic.json", "lora_state_reset.json", "lora_state_interop.json")
# Node types an example workflow may use besides ours: ComfyUI core, frontend-only notes, and the LORA_STACK
# producers of other packs that LoRA State interoperates with.
CORE_TYPES = {"CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "VAEDecode", "SaveImage", "EmptyLatentImage",
              "PreviewImage", "PreviewAny", "LoraLoader", "VAELoader", "Note", "MarkdownNote"}
THIRD_PARTY_TYPES = {"CR LoRA Stack", "LoRA Stacker"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FORBIDDEN_REQUIREMENTS = {"torch", "torchvision", "torchaudio", "torchsde", "comfyui-frontend-package"}


# ---- reading nodes/nodes.py without importing it ------------------------------------------------------------------
class Opaque:
    """A value the evaluator does not compute (e.g. folder_paths.get_filename_list(...)); as an input type it is a
    combo list."""

    def __init__(self, what):
        self.what = what

    def __repr__(self):
        return f"Opaque({self.what})"


def _eval(node, env):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env.get(node.id, Opaque(node.id))
    if isinstance(node, ast.Dict):
        return {_eval(k, env): _eval(v, env) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Tuple):
        return tuple(_eval(e, env) for e in node.elts)
    if isinstance(node, ast.List):
        return [_eval(e, env) for e in node.elts]
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            part = _eval(value.value, env) if isinstance(value, ast.FormattedValue) else value.value
            assert not isinstance(part, Opaque), f"f-string part not computable: {ast.unparse(value)}"
            parts.append(str(part))
        return "".join(parts)
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, env), _eval(node.right, env)
        if isinstance(left, int) and isinstance(right, int):
            return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]
        return Opaque(ast.unparse(node))
    if isinstance(node, ast.Call):
        return Opaque(ast.unparse(node))
    return Opaque(ast.unparse(node))


def _run(statements, env):
    """Execute the statements of a simple INPUT_TYPES body; returns the value of its `return`."""
    for stmt in statements:
        if isinstance(stmt, ast.Return):
            return _eval(stmt.value, env)
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target, value = stmt.targets[0], _eval(stmt.value, env)
            if isinstance(target, ast.Name):
                env[target.id] = value
            elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                env[target.value.id][_eval(target.slice, env)] = value
            else:
                raise AssertionError(f"unsupported assignment in INPUT_TYPES: {ast.unparse(stmt)}")
        elif isinstance(stmt, ast.For) and isinstance(stmt.iter, ast.Call) and ast.unparse(stmt.iter.func) == "range":
            args = [_eval(a, env) for a in stmt.iter.args]
            assert all(isinstance(a, int) for a in args), f"range() not computable: {ast.unparse(stmt.iter)}"
            for value in range(*args):
                env[stmt.target.id] = value
                result = _run(stmt.body, env)
                if result is not None:
                    return result
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue   # docstring
        else:
            raise AssertionError("nodes.py INPUT_TYPES uses a construct this test cannot read; extend _run(): "
                                 + ast.unparse(stmt))
    return None


def _module_constants(tree):
    consts = {}
    for stmt in tree.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and isinstance(stmt.value, ast.Constant)):
            consts[stmt.targets[0].id] = stmt.value.value
    return consts


def _module_dict(tree, name):
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            return stmt.value
    raise AssertionError(f"{name} not found in nodes.py")


def _class_attr(cls, name):
    for stmt in cls.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            return stmt.value
    return None


def _input_kind(spec):
    """'widget' or 'link' for an INPUT_TYPES spec tuple, and the declared type ('COMBO' for lists)."""
    declared = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if not isinstance(declared, str):          # a list of choices (literal, list(...), or computed)
        return "widget", "COMBO", options
    if declared in WIDGET_TYPES and not options.get("forceInput"):
        return "widget", declared, options
    return "link", declared, options


def read_nodes():
    tree = ast.parse(NODES_PY.read_text(encoding="utf-8"))
    # nodes.py imports SLOTS/NONE from the pure lora_state/stack_rows.py
    consts = _module_constants(ast.parse(STACK_ROWS_PY.read_text(encoding="utf-8"))) | _module_constants(tree)
    class_map = _module_dict(tree, "NODE_CLASS_MAPPINGS")
    mapping = {k.value: v.id for k, v in zip(class_map.keys, class_map.values)}
    display = ast.literal_eval(_module_dict(tree, "NODE_DISPLAY_NAME_MAPPINGS"))
    classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
    nodes = {}
    for node_id, class_name in mapping.items():
        cls = classes[class_name]
        func = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "INPUT_TYPES")
        spec = _run(func.body, dict(consts))
        inputs = []   # ordered as ComfyUI orders them: required, then optional
        for section in ("required", "optional"):
            for name, input_spec in (spec.get(section) or {}).items():
                kind, declared, options = _input_kind(input_spec)
                inputs.append({"name": name, "section": section, "kind": kind, "type": declared,
                               "tooltip": options.get("tooltip") if isinstance(options.get("tooltip"), str) else None,
                               "default": options.get("default")})

        def const(attr, default=None, cls=cls):
            node = _class_attr(cls, attr)
            if node is None:
                return default
            value = _eval(node, consts)
            return default if isinstance(value, Opaque) else value

        nodes[node_id] = {"class": class_name, "display_name": display.get(node_id), "inputs": inputs,
                          "description": const("DESCRIPTION"), "return_types": const("RETURN_TYPES", ()),
                          "return_names": const("RETURN_NAMES"), "output_tooltips": const("OUTPUT_TOOLTIPS")}
    return nodes


def read_modes():
    tree = ast.parse((ROOT / "lora_state" / "planner.py").read_text(encoding="utf-8"))
    return tuple(ast.literal_eval(_module_dict(tree, "MODES")))


NODES = read_nodes()


def test_nodes_py_reader_sees_the_nodes():
    assert set(NODES) == {"LoraStateStack", "LoraStateReconcile", "LoraStateReset"}
    stack_inputs = [i["name"] for i in NODES["LoraStateStack"]["inputs"]]
    assert stack_inputs[:5] == ["lora_stack", "lora_1", "strength_model_1", "strength_clip_1", "on_1"]
    assert [i["name"] for i in NODES["LoraStateReconcile"]["inputs"]] == ["model", "mode", "clip", "lora_stack"]


# ---- locales/en/nodeDefs.json -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nodedefs():
    return json.loads(NODEDEFS.read_text(encoding="utf-8"))


def test_nodedefs_keys_are_the_node_ids(nodedefs):
    assert set(nodedefs) == set(NODES)


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_nodedefs_match_node_definition(nodedefs, node_id):
    entry, node = nodedefs[node_id], NODES[node_id]
    fix = " (update locales/en/nodeDefs.json: for English it overrides the text in nodes/nodes.py)"
    assert entry["display_name"] == node["display_name"], fix
    if node["description"]:
        assert entry["description"] == node["description"], fix
    else:
        assert entry.get("description")
    names = [i["name"] for i in node["inputs"]]
    assert set(entry["inputs"]) == set(names), f"inputs differ from INPUT_TYPES{fix}"
    for spec in node["inputs"]:
        item = entry["inputs"][spec["name"]]
        assert isinstance(item.get("name"), str) and item["name"].strip(), spec["name"]
        assert isinstance(item.get("tooltip"), str) and item["tooltip"].strip(), f"{spec['name']} has no tooltip"
        if spec["tooltip"]:
            assert item["tooltip"] == spec["tooltip"], f"tooltip of {spec['name']} differs{fix}"
    outputs = entry.get("outputs", {})
    assert set(outputs) == {str(i) for i in range(len(node["return_types"]))}
    for i in range(len(node["return_types"])):
        if node["return_names"]:
            assert outputs[str(i)]["name"] == node["return_names"][i], fix
        if node["output_tooltips"]:
            assert outputs[str(i)]["tooltip"] == node["output_tooltips"][i], fix
        assert outputs[str(i)].get("tooltip")


# ---- help pages ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("node_id", sorted(NODES))
def test_help_page(node_id):
    page = ROOT / "web" / "docs" / f"{node_id}.md"
    assert page.is_file(), f"missing help page {page.relative_to(ROOT)}"
    text = page.read_text(encoding="utf-8")
    assert text.startswith(f"# {NODES[node_id]['display_name']}\n")
    for spec in NODES[node_id]["inputs"]:
        first_slot = re.sub(r"_\d+$", "_1", spec["name"])
        assert f"`{spec['name']}`" in text or f"`{first_slot}`" in text, f"{spec['name']} not explained"
    for name in NODES[node_id]["return_names"] or ():
        assert f"`{name}`" in text, f"output {name} not explained"
    assert "## Example" in text


def test_reconcile_help_explains_every_mode():
    text = (ROOT / "web" / "docs" / "LoraStateReconcile.md").read_text(encoding="utf-8")
    for mode in read_modes():
        assert f"**{mode}**" in text


# ---- example workflows --------------------------------------------------------------------------------------------
def _pack_name():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
    except ImportError:   # Python 3.10
        return re.search(r'^name\s*=\s*"([^"]+)"', text, re.MULTILINE).group(1)
    return tomllib.loads(text)["project"]["name"]


def _workflow_files():
    return sorted(WORKFLOWS.glob("*.json"))


def test_expected_workflows_exist():
    assert {p.name for p in _workflow_files()} >= set(EXPECTED_WORKFLOWS)


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.name)
def test_workflow_structure_and_links(path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    for key in ("last_node_id", "last_link_id", "nodes", "links", "version"):
        assert key in wf, key
    nodes = {}
    for node in wf["nodes"]:
        assert isinstance(node["id"], int) and node["id"] not in nodes, f"duplicate/invalid node id {node['id']}"
        nodes[node["id"]] = node
        assert node["type"] in set(NODES) | CORE_TYPES | THIRD_PARTY_TYPES, f"unknown node type {node['type']}"
        for key in ("pos", "size", "inputs", "outputs", "widgets_values", "mode"):
            assert key in node, f"node {node['id']} lacks {key}"
    assert wf["last_node_id"] >= max(nodes)
    assert any(n["type"] in NODES for n in nodes.values()), "a LoRA State example should use a LoRA State node"

    links = {}
    for link in wf["links"]:
        assert isinstance(link, list) and len(link) == 6, link
        link_id, src, src_slot, dst, dst_slot, link_type = link
        assert link_id not in links, f"duplicate link id {link_id}"
        links[link_id] = link
        assert src in nodes and dst in nodes, f"link {link_id} references a missing node"
        out = nodes[src]["outputs"][src_slot]
        assert link_id in (out.get("links") or []), f"link {link_id} not listed by output {src}:{src_slot}"
        assert out["type"] == link_type, f"link {link_id}: type {link_type} vs output {out['type']}"
        inp = nodes[dst]["inputs"][dst_slot]
        assert inp.get("link") == link_id, f"link {link_id} not set on input {dst}:{dst_slot}"
        assert inp["type"] in (link_type, "*"), f"link {link_id}: type {link_type} into {inp['type']}"
    assert wf["last_link_id"] >= max(links, default=0)
    for node in nodes.values():   # every reference from a node is a link that points back at it
        for slot, inp in enumerate(node["inputs"]):
            if inp.get("link") is not None:
                assert links[inp["link"]][3:5] == [node["id"], slot], f"node {node['id']} input {inp['name']}"
        for slot, out in enumerate(node["outputs"]):
            for link_id in out.get("links") or []:
                assert links[link_id][1:3] == [node["id"], slot], f"node {node['id']} output {out['name']}"


@pytest.mark.parametrize("path", _workflow_files(), ids=lambda p: p.name)
def test_workflow_uses_our_nodes_as_defined(path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    modes = read_modes()
    for node in wf["nodes"]:
        if node["type"] not in NODES:
            if node["type"] in THIRD_PARTY_TYPES:
                props = node.get("properties", {})
                assert props.get("cnr_id") or props.get("aux_id"), "say which pack provides it"
            continue
        spec = NODES[node["type"]]
        assert node["properties"].get("cnr_id") == _pack_name()
        declared = {i["name"]: i for i in spec["inputs"]}
        for inp in node["inputs"]:
            assert inp["name"] in declared, f"{node['type']} has no input {inp['name']}"
            if inp.get("widget") is None:
                assert inp["type"] == declared[inp["name"]]["type"]
        connected = {i["name"] for i in node["inputs"] if i.get("link") is not None}
        for i in spec["inputs"]:
            if i["kind"] == "link" and i["section"] == "required":
                assert i["name"] in connected, f"{node['type']}: required input {i['name']} is not connected"
        outputs = [o["type"] for o in node["outputs"]]
        assert outputs == list(spec["return_types"])
        widgets = [i for i in spec["inputs"] if i["kind"] == "widget"]
        values = node["widgets_values"]
        assert len(values) == len(widgets), f"{node['type']}: {len(values)} widget values for {len(widgets)} widgets"
        for widget, value in zip(widgets, values):
            kind = widget["type"]
            if kind == "BOOLEAN":
                assert isinstance(value, bool), (widget["name"], value)
            elif kind in ("FLOAT", "INT"):
                assert isinstance(value, (int, float)) and not isinstance(value, bool), (widget["name"], value)
            else:
                assert isinstance(value, str), (widget["name"], value)
            if widget["name"] == "mode":
                assert value in modes
            if widget["name"].startswith("lora_") and value != "None":
                assert value.startswith("example_"), "use placeholder LoRA names users replace with their own"
            if widget["name"] == "rows":
                for row in json.loads(value):
                    assert set(row) == {"on", "lora", "strength", "strength_clip"}, row
                    assert row["lora"] == "None" or row["lora"].startswith("example_"), "use placeholder names"


# ---- requirements.txt ---------------------------------------------------------------------------------------------
def test_requirements_install_nothing_comfyui_provides():
    path = ROOT / "requirements.txt"
    assert path.is_file()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[\s<>=!~;\[@]", line, maxsplit=1)[0].lower().replace("_", "-")
        assert name not in FORBIDDEN_REQUIREMENTS, f"requirements.txt must not list {name}"


# ---- .comfyignore -------------------------------------------------------------------------------------------------
PUBLISHED = ("__init__.py", "nodes/nodes.py", "lora_state/manager.py", "web/lora_state.js", "web/docs/LoraStateStack.md",
             "locales/en/nodeDefs.json", "example_workflows/lora_state_basic.json", "pyproject.toml", "README.md",
             "requirements.txt")
NOT_PUBLISHED = ("tests/test_pack_files.py", "tests/integration/comfy_harness.py", "scripts/test.sh", ".ci/run",
                 "constraints.txt", "docs/bench/comfyui_sd15.json", "docs/bench/raw/run1.txt")


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_comfyignore_excludes_dev_files_only():
    patterns = (ROOT / ".comfyignore").read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:   # a bare repo whose only ignore rules are .comfyignore's
        subprocess.run(["git", "init", "-q", tmp], check=True)
        Path(tmp, ".gitignore").write_text(patterns, encoding="utf-8")

        def ignored(rel):
            r = subprocess.run(["git", "-C", tmp, "check-ignore", "-q", "--no-index", rel], check=False)
            return r.returncode == 0

        assert [p for p in PUBLISHED if ignored(p)] == [], "published files excluded by .comfyignore"
        assert [p for p in NOT_PUBLISHED if not ignored(p)] == [], "dev files not excluded by .comfyignore"


# ---- web/ ---------------------------------------------------------------------------------------------------------
def test_web_holds_no_dev_files():
    for path in (ROOT / "web").rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        assert "node_modules" not in rel and not re.search(r"\.(test|spec)\.[cm]?js$", rel), rel


def test_js_talks_to_the_server_we_have():
    js = JS.read_text(encoding="utf-8")
    imports = re.findall(r'^\s*import\s[^;]*?from\s+["\']([^"\']+)["\']', js, re.MULTILINE)
    assert sorted(imports) == ["../../scripts/api.js", "../../scripts/app.js", "./stack_rows.js"], \
        "no external imports"
    assert 'name: "lora_state.ledger"' in js
    runtime = ast.parse((ROOT / "nodes" / "runtime.py").read_text(encoding="utf-8"))
    event = _module_constants(runtime)["EVENT"]
    assert f'"{event}"' in js, f"the extension must listen to the websocket event {event!r}"
    routes = (ROOT / "nodes" / "routes.py").read_text(encoding="utf-8")
    prefix = _module_constants(ast.parse(routes))["PREFIX"]
    for method, route in (("get", "ledger"), ("post", "reset"), ("post", "verify")):
        assert f'@routes.{method}(PREFIX + "/{route}")' in routes, f"routes.py lost {method.upper()} {route}"
        assert route in js
    assert f'"{prefix}/ledger"' in js


@pytest.mark.parametrize("js", sorted((ROOT / "web").glob("*.js")), ids=lambda p: p.name)
def test_js_parses_with_node(js):
    node = shutil.which("node")
    if node is None:
        pytest.skip(f"node is not installed: web/{js.name} syntax not checked")
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, js.stem + ".mjs")   # .mjs: checked as an ES module
        shutil.copyfile(js, copy)
        result = subprocess.run([node, "--check", copy], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
