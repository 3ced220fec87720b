"""What a compiled program needs of a device's memory, from XLA's ``memory_analysis()``."""


def peak_bytes(memory) -> int | None:
  """Arguments + outputs + temporaries, less the outputs that alias (donated) arguments: the
  bytes a device holds at the program's peak. ``memory``: ``compiled.memory_analysis()`` (None
  on backends that give none -> None)."""
  if memory is None:
    return None
  return (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
