"""LoRA adapters: PEFT format, the controller's registry and slots, the workers' stacks."""
