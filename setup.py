"""Build glue: compiles shim_c/ into the plain preload library aarp/libaarp.so.

setuptools' build_ext (the same machinery cffi's setuptools integration drives) compiles and
links it, but as a plain shared object: no Python suffix, no PyInit symbol, no libpython.
The file list comes from shim_c/ itself so new C files need no change here.
"""

import importlib.util
import os
import sys
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

C_FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden",
           "-D_GNU_SOURCE", "-O2", "-fno-strict-aliasing", "-pthread"]


class SharedLibrary(Extension):
    """A C shared library installed inside a package, not a Python extension module."""


class BuildSharedLibraries(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        ext = self.ext_map.get(fullname)
        if isinstance(ext, SharedLibrary):
            *pkg, name = fullname.split(".")
            return os.path.join(*pkg, f"{name}.so")
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        if isinstance(ext, SharedLibrary):
            return []
        return super().get_export_symbols(ext)

    def get_libraries(self, ext: Extension) -> list[str]:
        if isinstance(ext, SharedLibrary):
            return list(ext.libraries)
        return super().get_libraries(ext)

    def build_extension(self, ext: Extension) -> None:
        if isinstance(ext, SharedLibrary):
            # Python's own include dirs and CFLAGS are harmless; its libraries are not wanted.
            ext.include_dirs = [d for d in ext.include_dirs if "python" not in d.lower()]
        super().build_extension(ext)
        if isinstance(ext, SharedLibrary):
            self._copy_header(os.path.dirname(self.get_ext_fullpath(ext.name)))

    def copy_extensions_to_source(self) -> None:
        super().copy_extensions_to_source()
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            if isinstance(ext, SharedLibrary):
                self._copy_header(build_py.get_package_dir(ext.name.rpartition(".")[0]))

    def _copy_header(self, package_dir: str) -> None:
        # The public header travels with the library: Python's cffi declarations come from it.
        self.copy_file(os.path.join("shim_c", "aarp.h"), os.path.join(package_dir, "aarp.h"))


def optional_fastpath() -> list[Extension]:
    """relay.fastpath._fastpath (cffi API mode + OpenSSL): optional, so the package still
    installs without a compiler or OpenSSL headers (the tunnel then runs in Python)."""
    try:
        spec = importlib.util.spec_from_file_location("fastpath_build", "relay/fastpath/build.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        ext = mod.ffibuilder.distutils_extension(tmpdir="build/cffi", verbose=False)
    except Exception as exc:  # no cffi in the build environment: skip, say why
        print(f"relay.fastpath: not built ({exc})", file=sys.stderr)
        return []
    ext.optional = True
    return [ext]


setup(
    ext_modules=[
        *optional_fastpath(),
        SharedLibrary(
            "aarp.libaarp",
            sources=sorted(glob("shim_c/*.c")),
            include_dirs=["shim_c"],
            depends=sorted(glob("shim_c/*.h")),
            extra_compile_args=C_FLAGS,
            extra_link_args=["-pthread", "-Wl,-z,defs", "-Wl,--as-needed"],
            libraries=["dl"],
        ),
    ],
    cmdclass={"build_ext": BuildSharedLibraries},
)
