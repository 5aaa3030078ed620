# The store boot image of a release: the upstream Talos ISO remastered with the release's kernel
# arguments and an embedded release manifest. No hypervisor: a null source, the remaster step as a
# shell-local provisioner, then artifice (the image becomes the artifact), checksum and manifest.

packer {
  required_version = ">= 1.6.6"
}

locals {
  image = "${var.output_dir}/${var.release_name}.iso"
  # Everything the remaster step needs, passed as one JSON value so no shell quoting is involved.
  spec = jsonencode({
    release_name       = var.release_name
    talos_version      = var.talos_version
    kubernetes_version = var.kubernetes_version
    upstream_iso       = var.upstream_iso
    upstream_sha256    = var.upstream_sha256
    kernel_args        = var.kernel_args
    extensions         = var.extensions
    installer_image    = var.installer_image
    cache_dir          = var.cache_dir
    source_date_epoch  = var.source_date_epoch
  })
}

source "null" "release" {
  communicator = "none"
}

build {
  sources = ["source.null.release"]

  provisioner "shell-local" {
    environment_vars = [
      "EDGEFLEET_PYTHON=${var.python}",
      "EDGEFLEET_RELEASE_SPEC=${local.spec}",
      "EDGEFLEET_RELEASE_IMAGE=${local.image}",
    ]
    inline = [
      "\"$EDGEFLEET_PYTHON\" -m edgefleet.releases.image remaster --spec \"$EDGEFLEET_RELEASE_SPEC\" --out \"$EDGEFLEET_RELEASE_IMAGE\"",
    ]
  }

  post-processors {
    post-processor "artifice" {
      files = [local.image]
    }
    post-processor "checksum" {
      checksum_types = ["sha256"]
      output         = "${local.image}.{{.ChecksumType}}"
    }
    post-processor "manifest" {
      output     = "${var.output_dir}/packer-manifest.json"
      strip_path = true
      custom_data = {
        release            = var.release_name
        talos_version      = var.talos_version
        kubernetes_version = var.kubernetes_version
        installer_image    = var.installer_image
        upstream_sha256    = var.upstream_sha256
      }
    }
  }
}
