"""The C backend: a quantized IR graph as generated C for microcontrollers and Linux boards.

`model` plans the schedule, streaming and static arena (`emit_c` -> `CModel`), `steps` and
`writer` turn it into ``model.c`` / ``model.h``, `bundle` writes the bundle's ``runtime/`` folder
(sources, build script, the container as a C array), `device` compiles, sizes and emulates it, and
`ref/` is the numpy integer reference that specifies every kernel bit for bit.
"""
