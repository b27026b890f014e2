"""`python -m nitro_emu ...`"""
from nitro_emu.cli import entry_point

entry_point()
