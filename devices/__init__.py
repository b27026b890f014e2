"""Device models. They plug into the machine through `nitro_emu.interfaces` only and never
touch Unicorn."""
