"""Build hook: the containerd gRPC stubs are generated from `src/rafs/content/protos` at build
time (grpcio-tools, a build requirement), so a wheel, an sdist build or `pip install .` holds a
complete rafs; an editable install generates them into the source tree.
"""

from importlib.resources import files
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROTOS = Path("src/rafs/content/protos")


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        package = Path("src") if self.editable_mode else Path(self.build_lib)
        generated = package / "rafs" / "content" / "_gen"
        generated.mkdir(parents=True, exist_ok=True)
        from grpc_tools import protoc

        well_known = str(files("grpc_tools") / "_proto")
        protos = sorted(str(path) for path in PROTOS.rglob("*.proto"))
        argv = ["protoc", f"-I{PROTOS}", f"-I{well_known}", f"--python_out={generated}",
                f"--pyi_out={generated}", f"--grpc_python_out={generated}", *protos]
        if protoc.main(argv) != 0:
            raise SystemExit(f"generating the containerd gRPC stubs from {PROTOS} failed")


setup(cmdclass={"build_py": BuildPyWithStubs})
