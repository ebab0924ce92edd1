"""Harness for integration tests against a REAL ComfyUI server (test-only code).

Importable without ComfyUI: it uses the standard library only (torch and safetensors are imported lazily by
``read_latent``). ComfyUI itself runs in a subprocess, found through two environment variables:

    COMFYUI_PATH    a ComfyUI checkout (the folder holding main.py); tests are skipped when unset
    COMFYUI_PYTHON  the Python that runs it (defaults to the interpreter running the tests)
    COMFYUI_ARGS    the device arguments of every server (default ``--cpu``; e.g. empty for ComfyUI's default GPU
                    setup, or ``--fast dynamic_vram`` for Dynamic VRAM on 0.14)

See tests/integration/SETUP_COMFYUI.md for how to get both.

Pieces:
    comfy_paths()           -> (COMFYUI_PATH, COMFYUI_PYTHON) or None
    build_assets(dest_dir)  -> random-weight checkpoints + LoRA files (runs build_assets.py under ComfyUI's Python)
    ComfyServer(assets_dir) -> context manager around ``python main.py $COMFYUI_ARGS`` on a free loopback port
    read_latent(server, history_entry, node_id) -> the SaveLatent tensor, bit-exact
    native_prompt(...)      -> an API-format prompt (see the node ids below)
    ComfyServer.models_setting() -> "cpu" / "gpu" / "dynamic": what a test may expect of the backends
    attach_model_clip_node(prompt, ...) -> put a MODEL/CLIP node between the LoRA chain and its consumers

Only loopback traffic: the server listens on 127.0.0.1 and the client talks to nothing else.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))  # tests/integration/ -> repo root
BUILDER = os.path.join(HERE, "build_assets.py")
PACK_LINK_NAME = "lora_state_pack"  # the repo appears to ComfyUI as custom_nodes/lora_state_pack

SKIP_REASON = "set COMFYUI_PATH (and COMFYUI_PYTHON) to a ComfyUI checkout; see tests/integration/SETUP_COMFYUI.md"

# ---- node ids used by native_prompt (stable: tests may add/replace nodes around them) ----
CKPT_NODE = "1"  # CheckpointLoaderSimple   outputs: 0 MODEL, 1 CLIP, 2 VAE
POS_NODE = "2"  # CLIPTextEncode (positive) input clip
NEG_NODE = "3"  # CLIPTextEncode (negative) input clip
LATENT_NODE = "4"  # EmptyLatentImage 64x64, batch 1
SAMPLER_NODE = "5"  # KSampler (steps 2, euler, normal, cfg 2.0, denoise 1.0) input model
SAVE_NODE = "6"  # SaveLatent
LORA_NODE_BASE = 10  # native LoraLoader i of the chain has id str(10 + i): "10", "11", ...

ASSET_CHECKPOINTS = ("tiny_a.safetensors", "tiny_b.safetensors")
ASSET_LORAS = (
    "kohya_lora_a.safetensors",
    "kohya_lora_b.safetensors",
    "locon_conv.safetensors",
    "loha.safetensors",
    "lokr.safetensors",
    "dora.safetensors",
    "peft_named.safetensors",
    "sub/nested_lora.safetensors",
)
ASSET_PICKLE = "not_a_lora.ckpt"

# Log lines that mean ComfyUI failed to use part of a LoRA file.
LORA_LOAD_PROBLEMS = (
    "lora key not loaded",
    "NOT LOADED",
    "Calculate Weight Failed",
    "WEIGHT NOT MERGED",
    "patch type not recognized",
    "ERROR lora ",
    "ERROR loha ",
    "ERROR lokr ",
    "ERROR glora ",
    "ERROR oft ",
    "ERROR boft ",
)


def comfy_paths():
    """(COMFYUI_PATH, COMFYUI_PYTHON) from the environment, or None when COMFYUI_PATH is unset/empty."""
    path = os.environ.get("COMFYUI_PATH", "").strip()
    if not path:
        return None
    python = os.environ.get("COMFYUI_PYTHON", "").strip() or sys.executable
    return os.path.abspath(path), python


def device_args() -> list[str]:
    """The servers' device arguments: $COMFYUI_ARGS, or ``--cpu`` when it is unset."""
    return shlex.split(os.environ.get("COMFYUI_ARGS", "--cpu"))


def _require_paths():
    p = comfy_paths()
    if p is None:
        raise RuntimeError(SKIP_REASON)
    if not os.path.isfile(os.path.join(p[0], "main.py")):
        raise RuntimeError(f"COMFYUI_PATH={p[0]} has no main.py")
    return p


def _builder_sha256():
    with open(BUILDER, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def build_assets(dest_dir, timeout=900):
    """Build the test checkpoints and LoRAs into dest_dir (models/checkpoints, models/loras, manifest.json).

    Runs build_assets.py with COMFYUI_PYTHON and cwd=COMFYUI_PATH. Skips the work when dest_dir already holds a
    manifest written by the same builder source. Builds into a staging folder first, so a half-built folder is
    never taken for a finished one. Returns the manifest (a dict).
    """
    comfy_path, python = _require_paths()
    dest_dir = os.path.abspath(dest_dir)
    manifest_path = os.path.join(dest_dir, "manifest.json")
    want = _builder_sha256()
    if os.path.isfile(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        if manifest.get("builder_sha256") == want:
            return manifest
    parent = os.path.dirname(dest_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".assets_staging_", dir=parent)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [python, BUILDER, staging],
        cwd=comfy_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode != 0 or not os.path.isfile(os.path.join(staging, "manifest.json")):
        raise RuntimeError(f"build_assets.py failed (rc={proc.returncode}):\n{out[-6000:]}")
    if os.path.isdir(dest_dir):
        old = dest_dir + ".old-" + uuid.uuid4().hex[:8]
        os.rename(dest_dir, old)
        _rmtree(old)
    os.rename(staging, dest_dir)
    with open(manifest_path) as f:
        return json.load(f)


def _rmtree(path):
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromptError(RuntimeError):
    """A prompt was rejected by validation or failed while executing. ``.details`` holds ComfyUI's answer."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details


class ComfyServer:
    """A real ComfyUI server on 127.0.0.1:<free port>, in its own temp folder, on the device $COMFYUI_ARGS names
    (the CPU unless set).

    - models: checkpoints/loras from ``assets_dir`` (via --extra-model-paths-config)
    - custom nodes: a temp folder holding the symlink ``lora_state_pack`` -> the repo root (``load_pack=False``
      leaves it out)
    - output/temp/input/user dirs in the temp folder; database in memory
    - torch runs with ``threads`` OpenMP threads (default 1; None keeps the environment's setting)
    The server's stdout+stderr go to ``<tmp>/server.log`` (``log_text()``). The temp folder is removed by
    stop() unless ``keep_tmp`` (or env LORA_STATE_KEEP_COMFY_TMP) is set; read outputs before stopping.
    """

    def __init__(
        self, assets_dir, load_pack=True, extra_args=(), boot_timeout=120.0, env=None, threads=1, keep_tmp=None,
        test_nodes=(),
    ):
        self.comfy_path, self.python = _require_paths()
        self.assets_dir = os.path.abspath(assets_dir)
        self.load_pack = load_pack
        self.test_nodes = [os.path.join(HERE, name) for name in test_nodes]   # test-only node folders in tests/integration
        self.extra_args = list(extra_args)
        self.boot_timeout = boot_timeout
        self.extra_env = {}
        if threads is not None:
            # One torch/OpenMP thread: on a 2-core machine shared with other work (pytest itself, a second
            # server), the default spinning OpenMP pool makes prompts 3-10x slower and erratic.
            self.extra_env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.extra_env.update(env or {})
        if keep_tmp is None:
            keep_tmp = bool(os.environ.get("LORA_STATE_KEEP_COMFY_TMP"))
        self.keep_tmp = keep_tmp
        self.proc = None
        self.port = None
        self.url = None
        self.tmp = None
        self.client_id = uuid.uuid4().hex
        self.boot_seconds = None
        self.last_prompt_seconds = None
        self._log_file = None

    # ---- lifecycle ----
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self):
        self.tmp = tempfile.mkdtemp(prefix="comfy_server_")
        for d in ("output", "temp", "input", "user", "custom_nodes"):
            os.makedirs(os.path.join(self.tmp, d))
        if self.load_pack:
            os.symlink(REPO_ROOT, os.path.join(self.tmp, "custom_nodes", PACK_LINK_NAME))
        for folder in self.test_nodes:
            os.symlink(folder, os.path.join(self.tmp, "custom_nodes", os.path.basename(folder)))
        yaml_path = os.path.join(self.tmp, "extra_model_paths.yaml")
        with open(yaml_path, "w") as f:
            f.write("lora_state_tests:\n")
            f.write("    checkpoints: {}\n".format(os.path.join(self.assets_dir, "models", "checkpoints")))
            f.write("    loras: {}\n".format(os.path.join(self.assets_dir, "models", "loras")))
            f.write("    custom_nodes: {}\n".format(os.path.join(self.tmp, "custom_nodes")))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            self.python,
            "main.py",
        ] + device_args() + [
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--extra-model-paths-config",
            yaml_path,
            "--output-directory",
            self.output_dir,
            "--temp-directory",
            os.path.join(self.tmp, "temp"),
            "--input-directory",
            os.path.join(self.tmp, "input"),
            "--user-directory",
            os.path.join(self.tmp, "user"),
            "--database-url",
            "sqlite:///:memory:",
        ] + self.extra_args
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update(self.extra_env)
        self.log_path = os.path.join(self.tmp, "server.log")
        self._log_file = open(self.log_path, "wb")  # noqa: SIM115 (open for the server's lifetime)
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.comfy_path,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = t0 + self.boot_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ComfyUI exited during boot (rc={self.proc.returncode}). Log:\n{self.log_text()[-8000:]}"
                )
            try:
                with urllib.request.urlopen(self.url + "/object_info", timeout=10) as r:
                    if r.status == 200:
                        break
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                log = self.log_text()
                self.stop()
                raise RuntimeError(
                    f"ComfyUI did not answer /object_info within {self.boot_timeout} s. Log:\n{log[-8000:]}"
                )
            time.sleep(0.25)
        self.boot_seconds = time.monotonic() - t0
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # the group this harness created for the server
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=15)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.tmp and not self.keep_tmp and os.path.isdir(self.tmp):
            for name in [PACK_LINK_NAME] + [os.path.basename(f) for f in self.test_nodes]:
                link = os.path.join(self.tmp, "custom_nodes", name)
                if os.path.islink(link):
                    os.unlink(link)  # never recurse into the repo
            _rmtree(self.tmp)

    @property
    def output_dir(self):
        return os.path.join(self.tmp, "output")

    # ---- log ----
    def log_text(self):
        if self._log_file is not None:
            self._log_file.flush()
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, AttributeError):
            return ""

    def models_setting(self) -> str:
        """How this server holds its models: "dynamic" (Dynamic VRAM: weights are read-only views of the file and
        ComfyUI applies every LoRA per layer, so LoRA State writes nothing), "gpu" (copied into VRAM at the first
        load, fp16 inference) or "cpu" (fp32 inference, the weights where the loader put them)."""
        if getattr(self, "_setting", None) is None:
            if "DynamicVRAM support detected and enabled" in self.log_text():
                self._setting = "dynamic"
            else:
                devices = self.get("/system_stats").get("devices") or [{}]
                self._setting = "cpu" if devices[0].get("type") == "cpu" else "gpu"
        return self._setting

    def log_mark(self):
        """A position in the log; pass it to log_since() to read what was logged after it."""
        return len(self.log_text())

    def log_since(self, mark):
        return self.log_text()[mark:]

    def pack_import_errors(self):
        """Log lines in which ComfyUI reports that it could not import this repo as a custom node pack
        (empty when it loaded, or when load_pack=False)."""
        return [
            ln
            for ln in self.log_text().splitlines()
            if PACK_LINK_NAME in ln and ("Cannot import" in ln or "IMPORT FAILED" in ln)
        ]

    # ---- HTTP (loopback only) ----
    def _request(self, method, path, payload=None, timeout=60):
        data = None
        headers = {}
        if payload is not None:
            data = json.dumps(payload).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            body = e.read()
            status = e.code
        text = body.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return status, parsed

    def get(self, path, timeout=60):
        """GET path -> parsed JSON (or text). Raises on a non-2xx status."""
        status, body = self._request("GET", path, timeout=timeout)
        if not 200 <= status < 300:
            raise RuntimeError(f"GET {path} -> {status}: {body}")
        return body

    def post(self, path, json_payload=None, timeout=60):
        """POST JSON -> (status, parsed body). Does not raise on error statuses."""
        return self._request("POST", path, json_payload if json_payload is not None else {}, timeout=timeout)

    # ---- prompts ----
    def queue_prompt(self, prompt):
        """POST /prompt; returns the prompt id. Raises PromptError on a validation error."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise PromptError(f"prompt rejected ({status}): {json.dumps(body, indent=1)[:6000]}", body)
        if body.get("node_errors"):
            raise PromptError("prompt has node errors: {}".format(json.dumps(body["node_errors"])[:6000]), body)
        return body["prompt_id"]

    def wait_history(self, prompt_id, timeout=120.0):
        deadline = time.monotonic() + timeout
        while True:
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id) if isinstance(hist, dict) else None
            if entry is not None:
                st = entry.get("status") or {}
                if st.get("completed") or st.get("status_str") in ("success", "error"):
                    return entry
            if self.proc.poll() is not None:
                raise PromptError(f"ComfyUI died while running {prompt_id}. Log:\n{self.log_text()[-6000:]}")
            if time.monotonic() > deadline:
                raise PromptError(f"prompt {prompt_id} did not finish in {timeout} s. Log:\n{self.log_text()[-6000:]}")
            time.sleep(0.05)

    def run_prompt(self, prompt, timeout=120.0):
        """Queue an API-format prompt, wait for it, return its /history entry.

        Raises PromptError with ComfyUI's node error (type, message, traceback) when it fails.
        ``self.last_prompt_seconds`` holds the wall time from POST to completed history.
        """
        t0 = time.monotonic()
        pid = self.queue_prompt(prompt)
        entry = self.wait_history(pid, timeout=timeout)
        self.last_prompt_seconds = time.monotonic() - t0
        st = entry.get("status") or {}
        if st.get("status_str") != "success":
            msgs = []
            for m in st.get("messages", []):
                if isinstance(m, (list, tuple)) and len(m) == 2 and m[0] == "execution_error":
                    d = m[1]
                    msgs.append(
                        "node {} ({}): {}: {}\n{}".format(
                            d.get("node_id"),
                            d.get("node_type"),
                            d.get("exception_type"),
                            d.get("exception_message"),
                            "".join(d.get("traceback") or []),
                        )
                    )
            raise PromptError("prompt {} failed: {}".format(pid, "\n".join(msgs) or json.dumps(st)[:4000]), entry)
        return entry

    def free(self, unload_models=True, free_memory=True, settle=0.5):
        """POST /free and give the idle prompt worker time to act on it (it does so when woken, or after the
        prompt that is running). Waits for an empty queue first."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            q = self.get("/queue")
            if not q.get("queue_running") and not q.get("queue_pending"):
                break
            time.sleep(0.05)
        status, _ = self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})
        if status != 200:
            raise RuntimeError(f"/free -> {status}")
        time.sleep(settle)

    def object_info(self, node_class=None):
        if node_class is None:
            return self.get("/object_info")
        return self.get(f"/object_info/{node_class}")[node_class]


# ComfyUI warnings that mean a custom node used it wrongly (moved APIs, inconsistent patches).
PACK_CAUSED_WARNINGS = (
    "string_to_seed has moved",
    "same patch uuid but different length of patches",
    "DeprecationWarning",
)


#: Why drift-tolerant latent comparisons (auto, delta) run only where ComfyUI infers in fp32 (CPU).
FP16_INFERENCE = ("in fp16 inference (a GPU) the random-weight test model amplifies a 1-ulp weight difference into "
                  "latent differences of a few percent, so there the weights are compared instead (verify route)")
#: Why the file-backed-weights tests need the CPU or Dynamic VRAM.
COPIED_TO_VRAM = ("on a GPU without Dynamic VRAM, ComfyUI copies the weights into VRAM at the first load: from then "
                  "on they are not file-backed, and LoRA State writes them in place like any other")


def patches_reason(server, usual: str) -> str:
    """The reason a ledger gives for keys carried as ComfyUI patches: under Dynamic VRAM every key has that one."""
    return "Dynamic VRAM" if server.models_setting() == "dynamic" else usual


def assert_weights_verified(server) -> None:
    """Every managed model's weights equal clean + stack within the drift it reports (keys with clean copies)."""
    for model in server.get("/lora_state/ledger")["models"]:
        status, report = server.post("/lora_state/verify", {"id": model["id"]})
        assert status == 200 and report["ok"], (model["kind"], report)


def pack_log_problems(log_text, allow=()):
    """What the pack caused in a ComfyUI log: tracebacks with a frame in the pack, ComfyUI's warnings about
    moved or misused APIs, and any line of the pack's own logger that reports a failure. `allow`: substrings of
    lines a test expects (e.g. a deliberate interrupt's roll-back)."""
    problems = []
    lines = log_text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("Traceback (most recent call last)"):
            block = [line]
            i += 1
            while i < len(lines) and (lines[i].startswith(" ") or lines[i].startswith("\t")):
                block.append(lines[i])
                i += 1
            if i < len(lines):
                block.append(lines[i])
            text = "\n".join(block)
            if (PACK_LINK_NAME in text or "/lora_state/" in text) and not any(a in text for a in allow):
                problems.append(text)
            i += 1
            continue
        pack_line = line.startswith("LoRA State") and any(w in line for w in ("failed", "rolled back", "error"))
        if (pack_line or any(w in line for w in PACK_CAUSED_WARNINGS)) and not any(a in line for a in allow):
            problems.append(line)
        i += 1
    return problems


def lora_problems(log_text):
    """Lines of a ComfyUI log that say a LoRA (or part of it) was not applied."""
    return [ln for ln in log_text.splitlines() if any(p in ln for p in LORA_LOAD_PROBLEMS)]


def latent(server, prompt, node=SAVE_NODE):
    """Run `prompt` and return what its SaveLatent node wrote."""
    return read_latent(server, server.run_prompt(prompt), node)


def latent_path(server, history_entry, node_id):
    out = (history_entry.get("outputs") or {}).get(str(node_id))
    if not out or not out.get("latents"):
        raise KeyError(
            "node {} has no SaveLatent output in this history entry: {}".format(
                node_id, json.dumps(history_entry.get("outputs"))[:2000]
            )
        )
    item = out["latents"][0]
    base = server.output_dir if item.get("type", "output") == "output" else os.path.join(server.tmp, "temp")
    return os.path.join(base, item.get("subfolder", ""), item["filename"])


def read_latent(server, history_entry, node_id=SAVE_NODE):
    """The tensor SaveLatent wrote: ``samples["samples"]`` stored raw (unscaled, fp32 on CPU) as the safetensors
    key ``latent_tensor`` next to an empty marker ``latent_format_version_0``. Read bit-exactly."""
    import safetensors.torch

    tensors = safetensors.torch.load_file(latent_path(server, history_entry, node_id))
    return tensors["latent_tensor"]


# ---- prompt builders (API format) ----
def native_prompt(
    ckpt="tiny_a.safetensors",
    loras=(),
    seed=1234,
    text="a photo of a cat",
    negative="blurry",
    prefix="lora_state_test/latent",
    steps=2,
    cfg=2.0,
    sampler="euler",
    scheduler="normal",
    width=64,
    height=64,
):
    """CheckpointLoaderSimple -> native LoraLoader chain -> CLIPTextEncode pos/neg -> EmptyLatentImage
    -> KSampler -> SaveLatent.

    loras: [(lora_name, strength_model, strength_clip), ...] -> LoraLoader nodes "10", "11", ... in order.
    Node ids: see CKPT_NODE, POS_NODE, NEG_NODE, LATENT_NODE, SAMPLER_NODE, SAVE_NODE, LORA_NODE_BASE.
    """
    p = {CKPT_NODE: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    model, clip = [CKPT_NODE, 0], [CKPT_NODE, 1]
    for i, (name, sm, sc) in enumerate(loras):
        nid = str(LORA_NODE_BASE + i)
        p[nid] = {
            "class_type": "LoraLoader",
            "inputs": {
                "model": model,
                "clip": clip,
                "lora_name": name,
                "strength_model": float(sm),
                "strength_clip": float(sc),
            },
        }
        model, clip = [nid, 0], [nid, 1]
    p[POS_NODE] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}}
    p[NEG_NODE] = {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": clip}}
    p[LATENT_NODE] = {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}}
    p[SAMPLER_NODE] = {
        "class_type": "KSampler",
        "inputs": {
            "model": model,
            "positive": [POS_NODE, 0],
            "negative": [NEG_NODE, 0],
            "latent_image": [LATENT_NODE, 0],
            "seed": seed,
            "steps": steps,
            "cfg": cfg,
            "sampler_name": sampler,
            "scheduler": scheduler,
            "denoise": 1.0,
        },
    }
    p[SAVE_NODE] = {"class_type": "SaveLatent", "inputs": {"samples": [SAMPLER_NODE, 0], "filename_prefix": prefix}}
    return p


def model_clip_sources(prompt):
    """The [node, output] links that currently feed KSampler.model and the text encoders' clip."""
    return list(prompt[SAMPLER_NODE]["inputs"]["model"]), list(prompt[POS_NODE]["inputs"]["clip"])


def attach_model_clip_node(
    prompt, node_id, class_type, inputs=None, model_input="model", clip_input="clip", model_output=0, clip_output=1
):
    """Return a copy of prompt with a node inserted after the current model/clip sources.

    The new node gets ``model_input``/``clip_input`` wired to the current sources (pass None to leave one out);
    KSampler.model is rewired to [node_id, model_output] and both CLIPTextEncode.clip to [node_id, clip_output]
    (None leaves that consumer as it was).
    """
    p = copy.deepcopy(prompt)
    model_src, clip_src = model_clip_sources(p)
    ins = dict(inputs or {})
    if model_input is not None:
        ins[model_input] = model_src
    if clip_input is not None:
        ins[clip_input] = clip_src
    p[str(node_id)] = {"class_type": class_type, "inputs": ins}
    if model_output is not None:
        p[SAMPLER_NODE]["inputs"]["model"] = [str(node_id), model_output]
    if clip_output is not None:
        p[POS_NODE]["inputs"]["clip"] = [str(node_id), clip_output]
        p[NEG_NODE]["inputs"]["clip"] = [str(node_id), clip_output]
    return p
