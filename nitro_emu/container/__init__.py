"""Container images for build-enclave: image references and their transports (a Docker or
Podman daemon's API, docker-archive tarballs, OCI layouts and OCI archives), digest-checked
reading of manifests, configs and layers, and flattening the layers into one root file
system as container runtimes do (whiteouts, opaque directories, hard and symbolic links),
without ever writing the image's files to the host.

Everything an image supplies is untrusted: names, sizes, links and JSON are checked, and
every failure is a `ContainerError` with one line saying what and where.
"""
