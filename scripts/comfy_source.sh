# Sourced by comfy_matrix.sh and gpu_kit.sh: a ComfyUI source folder from a folder or a git repository.
# export_source writes into $WORK/comfyui-<version>-<commit> and prints the folder's path.

version_of() {   # the __version__ in a ComfyUI source folder
    sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py"
}

export_source() {   # SOURCE -> a plain source folder; prints its path
    local src="$1"
    if [ -f "$src/main.py" ]; then (cd "$src" && pwd); return; fi
    local git_dir
    git_dir="$(git -C "$src" rev-parse --git-dir 2>/dev/null)" || { echo "not a ComfyUI folder or git repository: $src" >&2; return 1; }
    git_dir="$(cd "$src" && cd "$git_dir" && pwd)"
    local version commit dest
    version="$(git --git-dir "$git_dir" show HEAD:comfyui_version.py | sed -n 's/^__version__ = "\(.*\)"/\1/p')"
    commit="$(git --git-dir "$git_dir" rev-parse --short=8 HEAD)"
    dest="$WORK/comfyui-$version-$commit"
    if [ ! -f "$dest/main.py" ]; then
        rm -rf "$dest.partial" && mkdir -p "$dest.partial"
        # Public snapshots lack the blob of one unused tokenizer file: export every file whose blob exists.
        local missing
        missing="$(git --git-dir "$git_dir" ls-tree -r HEAD | awk '$2 == "blob" {print $3}' \
            | git --git-dir "$git_dir" cat-file --batch-check 2>/dev/null | awk '$2 == "missing" {print $1}')"
        local excludes=()
        for sha in $missing; do
            path="$(git --git-dir "$git_dir" ls-tree -r HEAD | awk -v s="$sha" '$3 == s {print $4}')"
            echo "missing blob, not exported: $path" >&2
            excludes+=(":(exclude,literal)$path")
        done
        git --git-dir "$git_dir" archive HEAD -- . "${excludes[@]}" | tar -x -C "$dest.partial" || return 1
        mv "$dest.partial" "$dest"
    fi
    echo "$dest"
}
