# Example variables for packer/release, matching the generated Talos-like upstream ISO:
#   edgefleet release fake-upstream --talos-version v1.12.6 --out talos-upstream.iso
#   packer build -var-file=packer/demo.pkrvars.hcl -var python=.venv/bin/python packer/release
# (`edgefleet release build` writes an equivalent JSON var file itself and records the result.)

release_name       = "demo-v1.12.6"
talos_version      = "v1.12.6"
kubernetes_version = "1.35.0"
upstream_iso       = "talos-upstream.iso"
upstream_sha256    = "018e6633d5fb958edec7bd5a8a5c54073b5713b5aba065cd4b839809aad8fa1f"
kernel_args        = ["talos.platform=nocloud", "console=ttyS0,115200"]
extensions         = []
installer_image    = "ghcr.io/siderolabs/installer:v1.12.6"
output_dir         = "out/releases/demo-v1.12.6"
