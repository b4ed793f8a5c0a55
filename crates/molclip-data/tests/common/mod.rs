//! PIL as an oracle: an 8-bit grey image through Python statements, run by `python3`.

use std::process::Command;

/// What PIL makes of the `width` x `height` 8-bit image `pixels` with `ops` (Python
/// statements on `img`; `Image` and `ImageFilter` are imported), as 8-bit grey.
pub fn pil(pixels: &[u8], width: usize, height: usize, ops: &str) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let (input, output) = (tmp.path().join("in.png"), tmp.path().join("out.png"));
    image::GrayImage::from_raw(width as u32, height as u32, pixels.to_vec()).unwrap().save(&input).unwrap();
    let script = format!(
        "import sys\nfrom PIL import Image, ImageFilter\nimg = Image.open(sys.argv[1])\n{ops}\nimg.save(sys.argv[2])"
    );
    let run = Command::new("python3")
        .args(["-c", &script, input.to_str().unwrap(), output.to_str().unwrap()])
        .output()
        .expect("python3 runs (the reference needs Pillow: python3 -m pip install pillow)");
    assert!(run.status.success(), "PIL failed: {}", String::from_utf8_lossy(&run.stderr));
    image::open(&output).unwrap().to_luma8().into_raw()
}
