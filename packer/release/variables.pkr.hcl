# Inputs of a release build. edgefleet reads this file (python-hcl2) to check values before it
# runs packer; packer 1.6.6 has no regex(), so validations use length/contains/substr only.

variable "release_name" {
  type        = string
  description = "Release name: lowercase letters, digits, '.', '-', '_' (unique in the catalog)."
  validation {
    condition     = length(var.release_name) > 0 && length(var.release_name) <= 63 && lower(var.release_name) == var.release_name
    error_message = "The release_name must be 1-63 lowercase characters."
  }
}

variable "talos_version" {
  type        = string
  description = "Talos version of the upstream ISO, e.g. v1.12.6."
  validation {
    condition     = length(var.talos_version) >= 6 && substr(var.talos_version, 0, 1) == "v"
    error_message = "The talos_version must look like v1.12.6."
  }
}

variable "kubernetes_version" {
  type        = string
  description = "Kubernetes version the release's clusters run, e.g. 1.35.0."
  default     = "1.35.0"
  validation {
    condition     = length(var.kubernetes_version) >= 5 && substr(var.kubernetes_version, 0, 1) != "v"
    error_message = "The kubernetes_version must look like 1.35.0 (no leading v)."
  }
}

variable "upstream_iso" {
  type        = string
  description = "The upstream Talos boot ISO: a local path or an http(s) URL (Talos Image Factory)."
}

variable "upstream_sha256" {
  type        = string
  description = "sha256 of the upstream ISO (required: the build refuses an unverified upstream)."
  validation {
    condition     = length(var.upstream_sha256) == 64 && lower(var.upstream_sha256) == var.upstream_sha256
    error_message = "The upstream_sha256 must be 64 lowercase hex digits."
  }
}

variable "kernel_args" {
  type        = list(string)
  description = "Extra kernel arguments; they replace upstream arguments with the same key."
  default     = ["talos.platform=nocloud"]
  validation {
    condition     = contains(var.kernel_args, "talos.platform=nocloud")
    error_message = "The kernel_args must include talos.platform=nocloud (stores boot from NoCloud seeds)."
  }
}

variable "extensions" {
  type        = list(string)
  description = "System extensions baked into the installer image (recorded as metadata)."
  default     = []
}

variable "installer_image" {
  type        = string
  description = "Installer image reference machine configs carry, e.g. factory.talos.dev/installer/<schematic>:v1.12.6."
  validation {
    condition     = length(var.installer_image) > 0
    error_message = "The installer_image must not be empty."
  }
}

variable "output_dir" {
  type        = string
  description = "Directory the image, its sha256 file and the packer manifest are written to."
}

variable "cache_dir" {
  type        = string
  description = "Where downloaded upstream ISOs are cached (default: <output_dir>/.cache)."
  default     = ""
}

variable "python" {
  type        = string
  description = "Python interpreter with edgefleet installed (runs the remaster step)."
  default     = "python3"
}

variable "source_date_epoch" {
  type        = number
  description = "Timestamp written into every new ISO record, for reproducible images."
  default     = 1767225600
}
