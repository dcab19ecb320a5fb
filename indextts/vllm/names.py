"""The architecture name vLLM knows our model by, in its own module because two modules need it:
`plugin` registers it with vLLM and `hf_config` declares it in the config, and `plugin` already
imports `hf_config`, so `hf_config` importing `plugin` back would be an import cycle."""

ARCHITECTURE = "IndexTTSGPTForCausalLM"
