"""The ML side of the loop: load a base model (4-bit nf4), QLoRA-train an adapter, generate completions.

Nothing here knows about Kubernetes or the sandbox, and nothing here ever executes model output:
`models` loads weights, `qlora` trains, `generation` produces text that the score stage runs in gVisor.
"""
