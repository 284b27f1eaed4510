/**
 * Add an image to a product and make it the thumbnail, through
 * updateProductsWorkflow (the product's images are replaced by the list given,
 * so the existing ones are passed back with their ids):
 *
 *   npx medusa exec ./src/scripts/add-image.ts <handle> <url>
 *
 * Prints `RESULT {"id","thumbnail","images":[{id,url,rank}]}`.
 */
import type { ExecArgs } from "@medusajs/framework/types"
import { updateProductsWorkflow } from "@medusajs/medusa/core-flows"
import { productByHandle, report } from "./lib"

export default async function addImage({ container, args }: ExecArgs) {
  const [handle, url] = args ?? []
  if (!handle || !url) throw new Error("usage: add-image.ts <handle> <url>")
  const product = await productByHandle(container, handle,
    ["id", "images.id", "images.url", "images.rank"])
  const images = [...(product.images ?? [])]
    .sort((a: any, b: any) => a.rank - b.rank)
    .map((img: any) => ({ id: img.id, url: img.url }))
  const { result } = await updateProductsWorkflow(container).run({
    input: {
      selector: { id: product.id },
      update: { images: [...images, { url }], thumbnail: url },
    },
  })
  const updated = result.find((p) => p.id === product.id)!
  report({
    id: updated.id,
    thumbnail: updated.thumbnail,
    images: (updated.images ?? []).map((i) => ({ id: i.id, url: i.url, rank: i.rank })),
  })
}
