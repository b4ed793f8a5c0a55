//! 16-bit grey TIFF stacks and the OME-XML that says which page is which time point and
//! channel: how raw fields and lossless crops are written.

/// The OME-XML of one image of `width` x `height`, one channel per name in `channels`,
/// `frames` time points, 16-bit, pages in XYCZT order (channel fastest).
pub fn ome_xml(name: &str, width: usize, height: usize, channels: &[&str], frames: usize) -> String {
    let list: String = channels
        .iter()
        .enumerate()
        .map(|(i, c)| format!("<Channel ID=\"Channel:0:{i}\" Name=\"{c}\" SamplesPerPixel=\"1\"/>"))
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <OME xmlns=\"http://www.openmicroscopy.org/Schemas/OME/2016-06\">\
         <Image ID=\"Image:0\" Name=\"{name}\"><Pixels ID=\"Pixels:0\" DimensionOrder=\"XYCZT\" Type=\"uint16\" \
         SizeX=\"{width}\" SizeY=\"{height}\" SizeC=\"{}\" SizeZ=\"1\" SizeT=\"{frames}\">{list}\
         <TiffData IFD=\"0\" PlaneCount=\"{}\"/></Pixels></Image></OME>",
        channels.len(),
        channels.len() * frames
    )
}

/// A multi-page 16-bit grey TIFF in memory; `description` goes into the first page's
/// ImageDescription (where OME-TIFF keeps its XML).
pub fn gray16_stack(
    width: usize,
    height: usize,
    pages: &[&[u16]],
    description: Option<&str>,
) -> Result<Vec<u8>, tiff::TiffError> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    let mut encoder = tiff::encoder::TiffEncoder::new(&mut bytes)?;
    for (i, page) in pages.iter().enumerate() {
        let mut image = encoder.new_image::<tiff::encoder::colortype::Gray16>(width as u32, height as u32)?;
        if let (0, Some(text)) = (i, description) {
            image.encoder().write_tag(tiff::tags::Tag::ImageDescription, text)?;
        }
        image.write_data(page)?;
    }
    Ok(bytes.into_inner())
}
